#!/usr/bin/env bash
# Ingest only, old build against new build, alternating: each round loads
# the same ROWS `scubactl gen` events with `scubactl ingest < file` into a
# fresh 4-leaf cluster per build, and prints the wall time and rows/s as
# scubactl reports them, the CPU its client used (centiseconds, bash's
# `time`), the CPU its servers used (centiseconds, /proc/PID/stat) and the
# time the whole machine was busy meanwhile (centiseconds, /proc/stat: it
# also counts the kernel's own threads, such as writeback). Quicker than
# benches/ab.sh when a change touches ingest alone. Compare the medians;
# leave out a round that ran right after a build. With FREE_MIB set, each
# load follows FREE_MIB MiB of memory written and freed FREE_SLEEP seconds
# (4 by default) before it: memory this VM has handed back to its host, as
# in benches/after-free.py.
#
# Usage: [FREE_MIB=4000] benches/ingest-ab.sh OLD_SCUBACTL NEW_SCUBACTL [ROUNDS]
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-4} ROWS="${ROWS:-2000000}"
data="$(mktemp --suffix=.jsonl)"
dir=""
cleanup() {
    rm -f "$data"
    if [ -n "$dir" ]; then "$NEW" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; fi
}
trap cleanup EXIT
"$NEW" gen --rows "$ROWS" --seed 1 > "$data"
source "$(dirname "$0")/lib.sh"
TIMEFORMAT='%3U %3S' # bash's `time`: the client's user and system CPU
for round in $(seq "$ROUNDS"); do
    for side in old new; do
        bin=$OLD; [ "$side" = new ] && bin=$NEW
        dir="$(mktemp -d)"
        "$bin" cluster up --leaves 4 --dir "$dir" >/dev/null 2>&1
        cat "$data" > /dev/null # in the page cache, as for every load
        if [ -n "${FREE_MIB:-}" ]; then
            PYTHONPATH="$(dirname "$0")" python3 -c \
                "from procstat import write_and_free; write_and_free($FREE_MIB)"
            sleep "${FREE_SLEEP:-4}"
        fi
        before=$(servers_cs "$dir") busy_before=$(busy_cs)
        client=$({ time "$bin" ingest --table events --dir "$dir" < "$data" > "$dir/ingest.out" 2>&1; } 2>&1)
        out=$(tail -1 "$dir/ingest.out")
        after=$(servers_cs "$dir") busy_after=$(busy_cs)
        client_cs=$(awk '{printf "%d", ($1 + $2) * 100}' <<<"$client")
        echo "round $round $side: $(grep -o '[0-9.]* s, [0-9]* rows/s' <<<"$out") client_cpu_cs $client_cs servers_cpu_cs $((after - before)) machine_busy_cs $((busy_after - busy_before))"
        "$bin" cluster down --dir "$dir" >/dev/null 2>&1
        rm -rf "$dir"
        dir=""
    done
done
