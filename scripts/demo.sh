#!/usr/bin/env bash
# make demo: three nodes on loopback render the bundled demo scene; half-way, the leader is killed with
# kill -9 and the job still completes with every frame.
# Usage: scripts/demo.sh PATH/TO/rexnode
set -euo pipefail
REXNODE=${1:-.build/release/rexnode}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO=${DEMO_DIR:-$ROOT/demo-out}
BLENDER=${BLENDER:-blender}
DISCOVERY=239.255.77.77:17777

rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "==> Building the demo scene with Blender's own Python"
"$BLENDER" -b --factory-startup --python "$ROOT/examples/make_demo_scene.py" -- "$DEMO/demo.blend" \
    >"$DEMO/make_scene.log" 2>&1 || { cat "$DEMO/make_scene.log"; exit 1; }

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> Creating a farm and starting three nodes on loopback (data in $DEMO/node1..3)"
TOKEN=$("$REXNODE" init --data "$DEMO/node1" | tail -n 1)
declare -A PID
for i in 1 2 3; do
    "$REXNODE" join --data "$DEMO/node$i" --token "$TOKEN" --name "node$i" --listen 127.0.0.1:0 \
        --interface 127.0.0.1 --discovery "$DISCOVERY" --dead-after 3 >"$DEMO/node$i.log" 2>&1 &
    PID[$i]=$!
    pids+=($!)
done
# peers --json, filtered with a line of Python: "3" members alive, and which node leads.
members() { "$REXNODE" peers --json --data "$DEMO/node$1" 2>/dev/null | python3 -c \
    'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["member"] and p["state"] == "alive"))' 2>/dev/null || echo 0; }
self_role() { "$REXNODE" peers --json --data "$DEMO/node$1" 2>/dev/null | python3 -c \
    'import json,sys; print([p["role"] for p in json.load(sys.stdin) if p["self"]][0])' 2>/dev/null || echo none; }
for _ in $(seq 1 150); do
    [ "$(members 1)" = 3 ] && [ "$(members 2)" = 3 ] && [ "$(members 3)" = 3 ] && break
    sleep 0.2
done
"$REXNODE" peers --data "$DEMO/node1"
leader=""
for i in 1 2 3; do [ "$(self_role $i)" = leader ] && leader=$i; done
[ -n "$leader" ] || { echo "no leader elected"; exit 1; }
submitter=$(( leader % 3 + 1 ))
echo "==> node$leader leads; submitting the demo scene from node$submitter"
start=$(date +%s.%N)
"$REXNODE" submit "$DEMO/demo.blend" --name demo --chunk 2 --output "$DEMO/frames" --data "$DEMO/node$submitter" &
submit=$!

# Half-way through, kill the leader without warning.
for _ in $(seq 1 600); do
    done_frames=$(ls "$DEMO/frames" 2>/dev/null | grep -c png || true)
    [ "$done_frames" -ge 12 ] && break
    sleep 0.1
done
echo "==> $done_frames frames in: kill -9 the leader (node$leader)"
kill -9 "${PID[$leader]}"
wait "$submit"
end=$(date +%s.%N)

echo "==> After the failover:"
"$REXNODE" peers --data "$DEMO/node$submitter"
"$REXNODE" jobs --data "$DEMO/node$submitter"
printf '==> %s frames rendered in %.1f s; they are in %s\n' \
    "$(ls "$DEMO/frames" | grep -c png)" "$(awk "BEGIN{print $end - $start}")" "$DEMO/frames"

echo "==> Stopping the nodes"
for i in 1 2 3; do
    [ "$i" = "$leader" ] || "$REXNODE" leave --data "$DEMO/node$i" >/dev/null
done
wait
pids=()
