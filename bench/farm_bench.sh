#!/usr/bin/env bash
# One-node farm benchmarks (issue 2), measured side by side in one run on this machine:
#   1. the same 24 frames (192x108, Cycles 8 samples): rexnode farm vs `blender -b -a` vs one Blender per frame
#   2. daemon memory (RSS, Blender excluded): idle and while rendering
#   3. ledger throughput: commands applied per second with the simulated renderer at 0 ms
# Usage: bench/farm_bench.sh [BIN_DIR]   (make bench builds release and passes .build/release)
set -euo pipefail
BIN=${1:-.build/release}
REXNODE="$BIN/rexnode"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BLENDER=${BLENDER:-blender}
ROUNDS=${ROUNDS:-2}
W=$(mktemp -d /tmp/rex-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_node() { # DATA RENDERER
    "$REXNODE" join --data "$1" --name bench --listen 127.0.0.1:0 --interface 127.0.0.1 \
        --discovery 239.255.77.78:17778 --renderer "$2" >"$1.log" 2>&1 &
    pids+=($!)
    NODE_PID=$!
    # Ready = this node leads its farm (of one): nothing left to wait for but the job.
    for _ in $(seq 1 400); do
        "$REXNODE" peers --json --data "$1" 2>/dev/null | grep -q '"role" : "leader"' && return
        sleep 0.05
    done
    echo "node did not start"; cat "$1.log"; exit 1
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $("$BLENDER" --version 2>/dev/null | head -1)"
"$BLENDER" -b --factory-startup --python "$ROOT/examples/make_demo_scene.py" -- "$W/scene.blend" \
    --frames 24 --width 192 --height 108 --samples 8 >"$W/make.log" 2>&1

best_anim=999999; best_per=999999; best_farm=999999; rss_idle=0; rss_peak=0
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$W/anim" "$W/per" "$W/farm" "$W/node"
    t0=$(now); "$BLENDER" -b "$W/scene.blend" -o "$W/anim/f_####" -a >/dev/null 2>&1; t1=$(now)
    anim=$(elapsed "$t0" "$t1")
    t0=$(now)
    for f in $(seq 1 24); do "$BLENDER" -b "$W/scene.blend" -o "$W/per/f_####" -f "$f" >/dev/null 2>&1; done
    t1=$(now); per=$(elapsed "$t0" "$t1")
    start_node "$W/node" blender
    sleep 1
    idle=$(rss_kb "$NODE_PID")
    t0=$(now)
    "$REXNODE" submit "$W/scene.blend" --output "$W/farm" --data "$W/node" >/dev/null &
    sub=$!
    peak=$idle
    while kill -0 "$sub" 2>/dev/null; do r=$(rss_kb "$NODE_PID"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
    wait "$sub"; t1=$(now); farm=$(elapsed "$t0" "$t1")
    "$REXNODE" leave --data "$W/node" >/dev/null; wait "$NODE_PID" 2>/dev/null || true
    n_anim=$(ls "$W/anim" | wc -l); n_per=$(ls "$W/per" | wc -l); n_farm=$(ls "$W/farm" | wc -l)
    echo "round $round: blender -a ${anim}s ($n_anim frames) | one process per frame ${per}s ($n_per) | rexnode ${farm}s ($n_farm) | daemon RSS idle $((idle/1024)) MB, rendering $((peak/1024)) MB"
    best_anim=$(awk "BEGIN{print ($anim < $best_anim) ? $anim : $best_anim}")
    best_per=$(awk "BEGIN{print ($per < $best_per) ? $per : $best_per}")
    best_farm=$(awk "BEGIN{print ($farm < $best_farm) ? $farm : $best_farm}")
    [ "$idle" -gt "$rss_idle" ] && rss_idle=$idle
    [ "$peak" -gt "$rss_peak" ] && rss_peak=$peak
done

echo
echo "== 24 frames, 192x108, Cycles 8 samples (best of $ROUNDS)"
printf '%-34s %8.2f s\n' "blender -b scene.blend -a" "$best_anim"
printf '%-34s %8.2f s\n' "one Blender process per frame" "$best_per"
printf '%-34s %8.2f s\n' "rexnode one-node farm (submit)" "$best_farm"
printf 'ratio farm / blender -a            %8.2f   (goal <= 1.0)\n' "$(awk "BEGIN{print $best_farm / $best_anim}")"
printf 'ratio per-frame / blender -a       %8.2f\n' "$(awk "BEGIN{print $best_per / $best_anim}")"
printf 'ratio per-frame / farm             %8.2f\n' "$(awk "BEGIN{print $best_per / $best_farm}")"
echo
echo "== daemon memory (RSS of rexnode join, Blender excluded; goal <= 50 MB)"
printf 'idle %d MB, while rendering (peak) %d MB\n' $((rss_idle / 1024)) $((rss_peak / 1024))

echo
echo "== ledger throughput, simulated renderer at 0 ms, 2000 frames, chunk 1"
rm -rf "$W/sim" "$W/simout"
start_node "$W/sim" simulated:0
t0=$(now)
"$REXNODE" submit "$W/scene.blend" --frames 1-2000 --chunk 1 --output "$W/simout" --data "$W/sim" >/dev/null
t1=$(now)
entries=$("$REXNODE" ledger --json --data "$W/sim" | grep -c '"index"')
secs=$(elapsed "$t0" "$t1")
printf '%d commands applied in %.2f s: %.0f commands/s, %.0f frames/s end to end\n' \
    "$entries" "$secs" "$(awk "BEGIN{print $entries / $secs}")" "$(awk "BEGIN{print 2000 / $secs}")"
"$REXNODE" leave --data "$W/sim" >/dev/null
