#!/usr/bin/env bash
# Restart benchmark: a leaf holding 1, 4 and 8 GiB restarted with --handoff
# (a successor adopts its shared memory in place) versus from its disk log.
# Measures, per size (medians of HANDOFF_RUNS hand-offs): the time from
# `scubactl leaf restart` to the new process answering (as the command
# prints it); the first query right after it (which checks the blocks the
# background pass has not reached yet); the background pass's time (leaf
# log); the peak memory during one more hand-off against the memory before
# it (shared memory plus every leaf process's own memory, sampled as fast as
# the shell can: a copy of the data would show as 2x); and query time on
# adopted versus freshly recovered data. One leaf, wide rows (1 KiB strings) so the
# data reaches GiBs quickly. Needs free memory of about 2x the largest size
# (shared memory + page cache) and the same on disk for the log.
#
# Usage: benches/restart.sh                 (SIZES_GIB="1 4 8")
#        SIZES_GIB="1" benches/restart.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
SIZES_GIB="${SIZES_GIB:-1 4 8}"
HANDOFF_RUNS="${HANDOFF_RUNS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"
(cd "$root" && cargo build --release -p scuba-cli)
S="$CARGO_TARGET_DIR/release/scubactl"
dir="$(mktemp -d)"
trap '"$S" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

"$S" cluster up --leaves 1 --dir "$dir" --memory-limit $((12 << 30)) >/dev/null
Q="SELECT count(*), sum(length(s)), max(n) FROM wide WHERE n % 7 = 3"

# Rows of ~1 KiB: id, time, n, and a 1000-character string.
gen() { # first_id count
    python3 - "$1" "$2" <<'PY'
import sys, random
first, count = int(sys.argv[1]), int(sys.argv[2])
alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
random.seed(first)
pool = ["".join(random.choice(alphabet) for _ in range(1000)) for _ in range(64)]
out = sys.stdout
buf = []
for k in range(first, first + count):
    buf.append('{"id":%d,"time":%d,"n":%d,"s":"%s"}\n' % (k, 1700000000 + k // 1000, k % 1000, pool[k % 64]))
    if len(buf) == 4096:
        out.write("".join(buf)); buf.clear()
out.write("".join(buf))
PY
}

query_ms() { # p50 of 11 runs of $Q over one connection, in ms
    "$S" query "$Q" --dir "$dir" --repeat 11 2>&1 >/dev/null | grep -o 'p50_ms=[0-9.]*' | cut -d= -f2
}

first_query_ms() { # one whole `scubactl query` process running $Q, in ms
    local t0 t1
    t0=$(date +%s%N)
    "$S" query "$Q" --dir "$dir" >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
}

# Seconds the newest adopted segment's background check took (leaf log).
checked_s() {
    local deadline=$((SECONDS + 120)) n
    n=$(grep -c "checked every adopted block" "$dir/logs/leaf-0.log" || true)
    while [ "$n" -lt "$1" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.05
        n=$(grep -c "checked every adopted block" "$dir/logs/leaf-0.log" || true)
    done
    grep "checked every adopted block" "$dir/logs/leaf-0.log" | tail -1 \
        | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'seconds=[0-9.]*' | cut -d= -f2
}

median() { sort -n | sed -n "$(( (HANDOFF_RUNS + 1) / 2 ))p"; }

# Bytes in use for the leaf: the machine's shared memory (the blocks live
# there) plus the leaf processes' own anonymous memory (old and new one).
leaf_memory() {
    local total p
    total=$(awk '/^Shmem:/ {printf "%d\n", $2 * 1024}' /proc/meminfo)
    for p in $(pgrep -f "leaf serve --cluster $dir/" || true); do
        total=$(( total + $(awk '/^RssAnon:/ {printf "%d\n", $2 * 1024}' "/proc/$p/status" 2>/dev/null || echo 0) ))
    done
    echo "$total"
}

# The peak of leaf_memory during one more hand-off (not timed: sampling
# takes CPU) over its value before, e.g. 1.01.
handoff_peak() {
    local before samples pid
    before=$(leaf_memory)
    samples=$(mktemp)
    ( while :; do leaf_memory >> "$samples"; done ) &
    pid=$!
    "$S" leaf restart leaf-0 --handoff --dir "$dir" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    leaf_memory >> "$samples"
    sort -n "$samples" | tail -1 | awk -v b="$before" '{printf "%.2f", $1 / b}'
    rm -f "$samples"
}

printf '| data | hand-off restart (ms) | first query after it (ms) | background check (s) | peak memory during hand-off ÷ before | disk-log restart (ms) | ratio | query on adopted (ms) | query on recovered (ms) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
rows_per_gib=$(( (1 << 30) / 1060 ))
have=0
checks=0
for gib in $SIZES_GIB; do
    want=$(( gib * rows_per_gib ))
    gen "$have" $(( want - have )) | "$S" ingest --table wide --dir "$dir" >/dev/null
    have=$want
    used=$("$S" cluster status --dir "$dir" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["memory_used_bytes"])')
    handoff=(); first=(); check=()
    for _ in $(seq "$HANDOFF_RUNS"); do
        handoff+=("$("$S" leaf restart leaf-0 --handoff --dir "$dir" | grep -o '[0-9]* ms' | grep -o '[0-9]*')")
        first+=("$(first_query_ms)")
        checks=$((checks + 1))
        check+=("$(checked_s "$checks")")
    done
    h=$(printf '%s\n' "${handoff[@]}" | median)
    f=$(printf '%s\n' "${first[@]}" | median)
    c=$(printf '%s\n' "${check[@]}" | median)
    p=$(handoff_peak)
    checks=$((checks + 1))
    checked_s "$checks" >/dev/null
    q_adopted=$(query_ms)
    d=$("$S" leaf restart leaf-0 --dir "$dir" | grep -o '[0-9]* ms' | grep -o '[0-9]*')
    q_recovered=$(query_ms)
    printf '| %s GiB (%s rows, %.2f GiB in memory) | %s | %s | %s | %s | %s | %sx | %s | %s |\n' \
        "$gib" "$have" "$(echo "$used / 1073741824" | bc -l)" "$h" "$f" "$c" "$p" "$d" "$(( d / (h > 0 ? h : 1) ))" "$q_adopted" "$q_recovered"
done
