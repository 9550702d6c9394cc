#!/usr/bin/env bash
# make bench: every benchmark under bench/ that is a script; module fragments add their own steps.
set -euo pipefail
BIN=${1:-.build/release}
cd "$(dirname "$0")/.."
for b in bench/*.sh bench/*.py; do
    echo "### $b"
    "$b" "$BIN"
    echo
done
