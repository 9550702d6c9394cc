#!/usr/bin/env bash
# make demo: a local farm on loopback renders the bundled demo scene, then stops.
# Usage: scripts/demo.sh PATH/TO/rexnode
set -euo pipefail
REXNODE=${1:-.build/release/rexnode}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO=${DEMO_DIR:-$ROOT/demo-out}
BLENDER=${BLENDER:-blender}

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

echo "==> Starting a one-node farm on loopback (data in $DEMO/node1)"
"$REXNODE" join --data "$DEMO/node1" --name node1 --listen 127.0.0.1:0 --interface 127.0.0.1 \
    --discovery 239.255.77.77:17777 >"$DEMO/node1.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    "$REXNODE" peers --data "$DEMO/node1" >/dev/null 2>&1 && break
    sleep 0.1
done
"$REXNODE" peers --data "$DEMO/node1"

echo "==> Submitting the demo scene (its own frame range)"
start=$(date +%s.%N)
"$REXNODE" submit "$DEMO/demo.blend" --name demo --output "$DEMO/frames" --data "$DEMO/node1"
end=$(date +%s.%N)
"$REXNODE" jobs --data "$DEMO/node1"
printf '==> %s frames rendered in %.1f s; they are in %s\n' \
    "$(ls "$DEMO/frames" | wc -l)" "$(awk "BEGIN{print $end - $start}")" "$DEMO/frames"

echo "==> Stopping the node"
"$REXNODE" leave --data "$DEMO/node1"
wait
pids=()
