#!/usr/bin/env bash
# Whole-process query time back to back against after an idle gap: a
# `scubactl query` process run N times in a row, then N times each after
# sleeping GAP seconds, on a fresh 4-leaf cluster holding ROWS events.
# Prints the medians (ms) and their ratio (after a gap ÷ back to back).
#
# Usage: benches/gap.sh [SCUBACTL]   (default: the release build)
#        N=15 GAP=0.2 ROWS=2000000 SQL="SELECT ..." benches/gap.sh
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"
S="${1:-$CARGO_TARGET_DIR/release/scubactl}"
N="${N:-15}" GAP="${GAP:-0.2}" ROWS="${ROWS:-2000000}"
SQL="${SQL:-SELECT service, count(*), avg(latency_ms) FROM events WHERE status >= 500 GROUP BY service}"
d="$(mktemp -d)"
trap '"$S" cluster down --dir "$d" >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
"$S" cluster up --leaves 4 --dir "$d" >/dev/null
"$S" gen --rows "$ROWS" --seed 1 | "$S" ingest --table events --dir "$d" >/dev/null
median_ms() { # runs the query N times, sleeping $1 s before each
    for _ in $(seq "$N"); do
        sleep "$1"
        t0=$(date +%s%N)
        "$S" query --dir "$d" "$SQL" >/dev/null 2>&1
        echo $((($(date +%s%N) - t0) / 1000))
    done | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)] / 1000}'
}
for round in 1 2; do
    now=$(median_ms 0)
    gap=$(median_ms "$GAP")
    echo "round $round: back to back $now ms, after ${GAP} s idle $gap ms, ratio $(awk "BEGIN {printf \"%.2f\", $gap / $now}")"
done
