#!/usr/bin/env bash
# Where a query's CPU goes: runs SQL N times over one connection
# (`scubactl query --repeat N`) against a fresh 4-leaf cluster holding ROWS
# `scubactl gen` events, and prints the p50 and, from /proc/PID/stat before
# and after, the CPU each server used per query. On 2 cores a query takes
# about its total CPU over two.
#
# Usage: benches/query-cpu.sh [SCUBACTL]   (default: the release build)
#        N=300 ROWS=2000000 SQL="SELECT ..." benches/query-cpu.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"
S="${1:-$CARGO_TARGET_DIR/release/scubactl}"
N="${N:-300}" ROWS="${ROWS:-2000000}"
SQL="${SQL:-SELECT service, count(*), avg(latency_ms) FROM events WHERE status >= 500 GROUP BY service}"
dir="$(mktemp -d)"
trap '"$S" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$S" cluster up --leaves 4 --dir "$dir" >/dev/null 2>&1
"$S" gen --rows "$ROWS" --seed 1 | "$S" ingest --table events --dir "$dir" 2>&1 | tail -1
"$S" query --dir "$dir" --repeat 20 "$SQL" >/dev/null 2>&1 # warm-up
pids=$(pgrep -f "serve --cluster $dir/")
declare -A before
for p in $pids; do before[$p]=$(cpu_cs "$p"); done
"$S" query --dir "$dir" --repeat "$N" "$SQL" 2>&1 >/dev/null | tail -1
for p in $pids; do
    used=$(( $(cpu_cs "$p") - before[$p] ))
    role=$(tr '\0' ' ' < "/proc/$p/cmdline" | grep -o -- '--id [^ ]*' | cut -d' ' -f2 || echo aggregator)
    echo "$role: $((used * 10000 / N)) us of CPU per query"
done
