#!/usr/bin/env bash
# Fan-out benchmarks (release build, loopback):
#  1. Overhead: a trivial query (count(*) over 1,000 rows per leaf) through
#     clusters of 1, 4, 16 and 64 leaves: p50 / p99 over 200 runs on one
#     connection (`scubactl query --repeat`), so client start-up is excluded.
#  2. A stopped leaf: p50 / p99 of a group-by over 400k rows on 4 leaves with
#     all leaves up, then with one leaf SIGSTOPped (deadline 1,000 ms): the
#     stopped leaf may cost the deadline and nothing more.
# Usage: benches/fanout.sh        (LEAF_COUNTS="1 4 16 64")
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
LEAF_COUNTS="${LEAF_COUNTS:-1 4 16 64}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"
(cd "$root" && cargo build --release -p scuba-cli)
S="$CARGO_TARGET_DIR/release/scubactl"
dir=""
cleanup() { [ -n "$dir" ] && { "$S" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }; }
trap cleanup EXIT

echo "| leaves | p50 ms | p99 ms |"
echo "|---|---|---|"
for n in $LEAF_COUNTS; do
    dir="$(mktemp -d)"
    "$S" cluster up --leaves "$n" --dir "$dir" --memory-limit $((256 << 20)) >/dev/null 2>&1
    "$S" gen --rows $((n * 1000)) | "$S" ingest --table t --dir "$dir" >/dev/null
    "$S" query "SELECT count(*) FROM t" --dir "$dir" --repeat 20 2>/dev/null || true
    stats=$("$S" query "SELECT count(*) FROM t" --dir "$dir" --repeat 200 2>&1 >/dev/null | grep p50)
    echo "| $n | $(echo "$stats" | sed 's/.*p50_ms=\([0-9.]*\).*/\1/') | $(echo "$stats" | sed 's/.*p99_ms=\([0-9.]*\).*/\1/') |"
    cleanup; dir=""
done

echo
echo "| 4 leaves, group-by over 400k rows | p50 ms | p99 ms | partial answers |"
echo "|---|---|---|---|"
dir="$(mktemp -d)"
"$S" cluster up --leaves 4 --dir "$dir" >/dev/null 2>&1
"$S" gen --rows 400000 | "$S" ingest --table events --dir "$dir" >/dev/null
Q="SELECT service, count(*), avg(latency_ms) FROM events GROUP BY service"
"$S" query "$Q" --dir "$dir" --repeat 10 2>/dev/null
row() { echo "| $1 | $(echo "$2" | sed 's/.*p50_ms=\([0-9.]*\).*/\1/') | $(echo "$2" | sed 's/.*p99_ms=\([0-9.]*\).*/\1/') | $(echo "$2" | sed 's/.*partial=\([0-9]*\).*/\1/') |"; }
row "all up" "$("$S" query "$Q" --dir "$dir" --repeat 100 --timeout 1000 2>&1 >/dev/null | grep p50)"
kill -STOP "$(cat "$dir/run/leaf-1.pid")"
row "leaf-1 stopped, deadline 1000 ms" "$("$S" query "$Q" --dir "$dir" --repeat 20 --timeout 1000 2>&1 >/dev/null | grep p50)"
kill -CONT "$(cat "$dir/run/leaf-1.pid")"
