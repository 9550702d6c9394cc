#!/bin/sh
# A stand-in for Blender that speaks rex_driver.py's protocol, for Render's crash tests. Tests copy it into a
# temporary directory, whose marker files switch its behaviour:
#   - no "crashed-once" file: the first render request dies like a segfaulting Blender (SIGKILL to itself);
#   - EXIT_IDLE=1 and no "exited-once" file: exits right after reporting the scene (Blender dying between frames);
#   - HANG=1: each render starts a child in the process group, writes its pid to child.pid and waits forever;
#   - ORPHAN=1: the crash leaves a child behind that keeps the output pipe open;
#   - CRASH_LOAD=1: dies while "loading", before reporting the scene;
#   - CHATTY=1: prints about 0.8 MB on stdout and stderr during each render;
#   - HANG_LOAD=1: never finishes "loading".
# Otherwise each request writes a small file and reports it done.
dir="$(dirname "$0")"
echo "Blender 3.4.1"
echo "Read blend: fake"
if [ -n "$CRASH_LOAD" ]; then
    kill -9 $$
fi
if [ -n "$HANG_LOAD" ]; then
    sleep 300
fi
scene='"frameStart": 1, "frameEnd": 9, "frameStep": 1, "resolutionX": 4, "resolutionY": 4'
scene="$scene"', "resolutionPercentage": 100, "engine": "CYCLES", "fileFormat": "PNG", "fileExtension": ".png"'
echo "@@REX {\"event\": \"scene\", $scene}"
if [ -n "$EXIT_IDLE" ] && [ ! -e "$dir/exited-once" ]; then
    touch "$dir/exited-once"
    exit 0
fi
while read -r line; do
    frame=$(echo "$line" | sed 's/.*"frame":\(-*[0-9]*\).*/\1/')
    output=$(echo "$line" | sed 's/.*"output":"\([^"]*\)".*/\1/')
    echo "Fra:$frame Mem:1.00M (Peak 1.00M) | Time:00:00.01 | Mem:0.10M, Peak:0.10M | Scene, ViewLayer | Sample 1/2"
    if [ ! -e "$dir/crashed-once" ]; then
        touch "$dir/crashed-once"
        echo "Error: EXCEPTION_ACCESS_VIOLATION (simulated)"
        if [ -n "$ORPHAN" ]; then
            sleep 300 &
            echo $! > "$dir/child.pid"
        fi
        kill -9 $$
    fi
    if [ -n "$CHATTY" ]; then
        # Far more than a pipe holds (64 KiB): rexnode must keep reading while it waits for the frame.
        yes "Fra:$frame Mem:1.00M (Peak 1.00M) | Time:00:00.01 | Scene, ViewLayer | Sample 1/2" | head -n 10000
        yes "Warning: chatty stderr line" | head -n 2000 >&2
    fi
    if [ -n "$HANG" ]; then
        sleep 300 &
        echo $! > "$dir/child.pid"
        wait
    fi
    printf 'image' > "$output.png"
    echo "@@REX {\"event\": \"done\", \"frame\": $frame, \"path\": \"$output.png\", \"seconds\": 0.0}"
done
