#!/usr/bin/env bash
# Repeated hand-offs of one leaf: every restart's time, so a rare stall
# shows (benches/restart.sh reports medians, which hide one).
#
# Usage: benches/handoffs.sh [SCUBACTL] [ROWS] [HANDOFFS]   (defaults: the
#        release build, 100000 rows of ~1 KiB, 20 hand-offs)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"
if [ -z "${1:-}" ]; then (cd "$(dirname "$here")" && cargo build --release -p scuba-cli >&2); fi
S=${1:-$CARGO_TARGET_DIR/release/scubactl}
ROWS=${2:-100000} N=${3:-20}
dir="$(mktemp -d)"
trap '"$S" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$S" cluster up --leaves 1 --dir "$dir" --memory-limit $((12 << 30)) >/dev/null
python3 - "$ROWS" <<'PY' | "$S" ingest --table wide --dir "$dir" >/dev/null
import random, sys
random.seed(0)
pool = ["".join(random.choice("abcdefghij0123456789") for _ in range(1000)) for _ in range(64)]
for k in range(int(sys.argv[1])):
    sys.stdout.write('{"id":%d,"time":%d,"n":%d,"s":"%s"}\n' % (k, 1700000000 + k // 1000, k % 1000, pool[k % 64]))
PY
times=()
for _ in $(seq "$N"); do
    times+=("$("$S" leaf restart leaf-0 --handoff --dir "$dir" | grep -o '[0-9]* ms' | grep -o '[0-9]*')")
    sleep 1
done
echo "hand-off ms: ${times[*]}"
printf '%s\n' "${times[@]}" | awk '$1 >= 1000 {n++} END {printf "%d of %d took a second or more\n", n, NR}'
