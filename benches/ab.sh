#!/usr/bin/env bash
# Old build against new build, alternating, in one run: the way this
# project measures one change on a shared, noisy machine.
#
# Usage: benches/ab.sh OLD_SCUBACTL NEW_SCUBACTL [ROUNDS]
#   (copy the build before a change somewhere first, e.g. /tmp/scubactl.old)
#
# Each round, for each build: a fresh 4-leaf cluster, 2M `scubactl gen`
# events ingested (rows/s, the client's CPU, the servers' CPU from
# /proc/PID/stat, UDP datagrams dropped for full socket buffers), then
# `scubactl query --repeat` p50s of the six queries of benches/compare.sh
# (1001 runs of `count(*)`, 41 of the others), then `--dry-run` CPU of the
# decode alone. Compare the medians per build.
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-3}
data="$(mktemp --suffix=.jsonl)"
trap 'rm -f "$data"' EXIT
"$NEW" gen --rows 2000000 --seed 1 > "$data"
source "$(dirname "$0")/lib.sh"
udp_drops() { # datagrams the kernel dropped for full socket buffers, so far
    awk '/^Udp:/ {getline; print $6; exit}' /proc/net/snmp
}
# The scuba SQL of benches/compare.py's QUERIES, in its order.
QUERIES=("SELECT count(*) FROM events"
         "SELECT service, avg(latency_ms) FROM events GROUP BY service"
         "SELECT service, count(*), avg(latency_ms) FROM events WHERE status >= 500 GROUP BY service"
         "SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) FROM events GROUP BY 1 ORDER BY 1"
         "SELECT user_id, sum(bytes) AS total FROM events GROUP BY user_id ORDER BY total DESC LIMIT 10"
         "SELECT count(DISTINCT user_id) FROM events")
for r in $(seq "$ROUNDS"); do
    for build in old new; do
        S=$OLD; [ "$build" = new ] && S=$NEW
        d="$(mktemp -d)"
        "$S" cluster up --leaves 4 --dir "$d" >/dev/null 2>&1
        cat "$data" > /dev/null   # from the page cache, for both builds
        a=$(servers_cs "$d")
        drops_a=$(udp_drops)
        out=$( { /usr/bin/time -f "client_cpu_s %U+%S" "$S" ingest --table events --dir "$d" < "$data"; } 2>&1 )
        b=$(servers_cs "$d")
        drops_b=$(udp_drops)
        p50s=""
        for q in "${QUERIES[@]}"; do
            runs=41; [ "$q" = "${QUERIES[0]}" ] && runs=1001
            p50s="$p50s $("$S" query --dir "$d" --repeat "$runs" "$q" 2>&1 >/dev/null | grep -o 'p50_ms=[0-9.]*' | cut -d= -f2)"
        done
        dry=$( { /usr/bin/time -f "%U" "$S" ingest --table events --dry-run --dir "$d" < "$data" >/dev/null; } 2>&1 | tail -1)
        echo "round $r $build: $(echo "$out" | grep -o '[0-9]* rows/s') $(echo "$out" | grep -o 'client_cpu_s [0-9.+]*') servers_cpu_cs $((b - a)) udp_rcvbuf_drops $((drops_b - drops_a)) | query p50 ms (count, group by, filtered, per minute, top 10, distinct):$p50s | dry-run user s $dry"
        "$S" cluster down --dir "$d" >/dev/null 2>&1 || true
        rm -rf "$d"
    done
done
