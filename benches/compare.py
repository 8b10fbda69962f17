#!/usr/bin/env python3
"""Peer comparison of scuba and DuckDB on the same JSON-lines events.

Usage: compare.py SCUBACTL DATA.jsonl    (normally through compare.sh)

Everything is wall-clock time on this machine:
 * Ingest: `scubactl ingest --table events` into a fresh 4-leaf local cluster
   (`cluster up --fsync group`), against DuckDB (Python module, in-memory
   database, default threads) running `CREATE TABLE events AS SELECT * FROM
   read_json_auto(file)`, and into a fresh `--fsync never` cluster to show
   what the log's fsync costs. INGEST_RUNS rounds, the three alternating in
   each, medians reported (after a `sync`, so a fresh build's writeback does
   not land in the first). The file is read once before each timed load, so
   every load reads it from the page cache. Each scuba load also prints
   the CPU its client and its servers used and the machine's busy, steal,
   idle and I/O-wait time meanwhile (centiseconds), so a slow load shows
   whether it worked more or waited.
 * Queries: six Scuba-shaped queries, 1 warm-up + RUNS timed runs each,
   medians reported. Scuba is timed two ways: as the whole `scubactl query`
   process (nothing subtracted; `SELECT 1` is timed as the client start-up
   baseline), and as the p50 of REPEAT runs over one open connection
   (`scubactl query --repeat`), which is what DuckDB's timing covers too.
   DuckDB is timed around `execute(sql).fetchall()` on an open connection. Answers are compared
   (sorted rows, floats to relative 1e-6); differences are printed as warnings.
The data's `time` is RFC 3339 in some rows and unix seconds in others. If
DuckDB does not infer a timestamp for it, DuckDB's query table is loaded from
a normalized copy written here (`time` as an ISO string in every row).
"""
import contextlib, datetime as dt, json, math, os, re, resource, shutil
import statistics, subprocess, sys, tempfile, time

import duckdb

from procstat import machine_cs, servers_cs

RUNS, LEAVES = 5, 4
INGEST_RUNS = 3
REPEAT = 21  # queries over one connection for the open-connection p50
SCUBACTL, DATA = sys.argv[1], sys.argv[2]
# (name, scuba SQL, DuckDB SQL when it differs). Both tables are `events`.
QUERIES = [
    ("count(*)", "SELECT count(*) FROM events", None),
    ("group by service, avg(latency_ms)",
     "SELECT service, avg(latency_ms) FROM events GROUP BY service", None),
    ("status >= 500, group by service, count + avg",
     "SELECT service, count(*), avg(latency_ms) FROM events "
     "WHERE status >= 500 GROUP BY service", None),
    ("per-minute time series",
     "SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) "
     "FROM events GROUP BY 1 ORDER BY 1",
     "SELECT time_bucket(INTERVAL '1 minute', time) AS minute, count(*) "
     "FROM events GROUP BY 1 ORDER BY 1"),
    ("top-10 user_id by sum(bytes)",
     "SELECT user_id, sum(bytes) AS total FROM events "
     "GROUP BY user_id ORDER BY total DESC LIMIT 10", None),
    ("count(DISTINCT user_id)", "SELECT count(DISTINCT user_id) FROM events", None),
]


def scuba(*args, stdin=None):
    """Runs scubactl; returns (wall seconds, completed process)."""
    t = time.perf_counter()
    p = subprocess.run([SCUBACTL, *args], stdin=stdin, capture_output=True, text=True)
    return time.perf_counter() - t, p


def error_of(p):
    lines = [l for l in p.stderr.splitlines() if l.startswith("error")]
    return "\n".join(lines) or p.stderr.strip() or f"exit code {p.returncode}"


@contextlib.contextmanager
def cluster(fsync):
    d = tempfile.mkdtemp(prefix=f"scuba-bench-{fsync}-")
    try:
        _, p = scuba("cluster", "up", "--leaves", str(LEAVES), "--fsync", fsync, "--dir", d)
        if p.returncode:
            logs = os.path.join(d, "logs")
            tails = "".join(
                f"\n--- {name} (last lines)\n" + "".join(open(os.path.join(logs, name)).readlines()[-15:])
                for name in sorted(os.listdir(logs))) if os.path.isdir(logs) else ""
            raise RuntimeError(f"cluster up: {error_of(p)}{tails}")
        yield d
    finally:
        scuba("cluster", "down", "--dir", d)
        shutil.rmtree(d, ignore_errors=True)


def warm(path):
    """Reads `path` once, so the timed read after it comes from the page
    cache: this machine reclaims idle page cache (DAMON), and a file read
    from disk costs the first reader ~0.5 s of system time."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def ingest(d):
    """Returns (wall seconds, rows, rows/s as printed by scubactl). Prints
    where the load's time went: the CPU the client and the servers used,
    and how long the machine's two cores were busy, idle and waiting for
    the disk meanwhile (centiseconds), so a slow load shows whether it
    worked more or waited."""
    warm(DATA)
    s0, m0 = servers_cs(d), machine_cs()
    # The children this process has waited for: from here, only scubactl.
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(DATA, "rb") as f:
        secs, p = scuba("ingest", "--table", "events", "--dir", d, stdin=f)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, m1 = servers_cs(d), machine_cs()
    client = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 100
    busy, steal, idle, iowait = (b - a for a, b in zip(m0, m1))
    print(f"  scubactl: {p.stdout.strip()}  [wall {secs:.2f} s; CPU cs: client {client:.0f}, "
          f"servers {s1 - s0}; machine cs: busy {busy}, steal {steal}, idle {idle}, iowait {iowait}]")
    m = re.search(r"(\d+) rows ingested, (\d+) rows rejected.*, (\d+) rows/s", p.stdout)
    if p.returncode or not m:
        raise RuntimeError(f"ingest failed: {error_of(p)}")
    return secs, int(m[1]), float(m[3])


def duck_load(con, path):
    warm(path)
    t = time.perf_counter()
    con.execute(f"CREATE OR REPLACE TABLE events AS SELECT * FROM read_json_auto('{path}')")
    return time.perf_counter() - t


def column_type(con, column):
    return dict(r[:2] for r in con.execute("DESCRIBE events").fetchall())[column]


def iso_time(v):
    """RFC 3339 string or unix seconds -> naive UTC ISO string (microseconds,
    rounded as scuba's decoder rounds)."""
    if isinstance(v, str):
        t = dt.datetime.fromisoformat(v).astimezone(dt.timezone.utc).replace(tzinfo=None)
    else:
        t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=round(v * 1e6))
    return t.isoformat(sep=" ", timespec="microseconds")


def normalize(src, dst):
    with open(src) as fi, open(dst, "w") as fo:
        for line in fi:
            row = json.loads(line)
            row["time"] = iso_time(row["time"])
            fo.write(json.dumps(row) + "\n")


def scuba_query(d, sql):
    secs, p = scuba("query", sql, "--dir", d, "--format", "json")
    if p.returncode:
        return secs, None, error_of(p)
    doc = json.loads(p.stdout)
    if doc["coverage"]["partial"]:
        print(f"  WARNING: partial answer for {sql!r}: {doc['coverage']}")
    return secs, doc["rows"], None


def scuba_repeat(d, sql):
    """p50 seconds of REPEAT runs over one open connection (no client
    start-up or connection set-up: what DuckDB's timing also leaves out)."""
    _, p = scuba("query", sql, "--dir", d, "--repeat", str(REPEAT))
    if p.returncode:
        return None, error_of(p)
    m = re.search(r"p50_ms=([0-9.]+)", p.stderr)
    return float(m.group(1)) / 1e3, None


def duck_query(con, sql):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return time.perf_counter() - t, rows, None


def median_of(run):
    """1 warm-up, then RUNS timed runs of run() -> (seconds, rows, error)."""
    _, rows, err = run()
    if err:
        return None, None, err
    results = [run() for _ in range(RUNS)]
    err = next((e for _, _, e in results if e), None)
    return statistics.median(s for s, _, _ in results), results[-1][1], err


def cell(v):
    if isinstance(v, str) and re.match(r"\d{4}-\d\d-\d\d[T ]\d\d:", v):
        return dt.datetime.fromisoformat(v.rstrip("Z"))
    return v


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def difference(a, b):
    """None when the answers agree, else a description."""
    key = lambda row: [str(c) for c in row if not isinstance(c, float)]
    a = sorted(([cell(c) for c in r] for r in a), key=key)
    b = sorted(([cell(c) for c in r] for r in b), key=key)
    if len(a) != len(b):
        return f"{len(a)} rows (scuba) vs {len(b)} rows (duckdb)"
    for x, y in zip(a, b):
        if len(x) != len(y) or not all(map(same, x, y)):
            return f"first difference: scuba {x} vs duckdb {y}"
    return None


def main():
    print(f"# scuba vs DuckDB, {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
          f"duckdb {duckdb.__version__}, data {DATA} "
          f"({os.path.getsize(DATA) / 1e6:.0f} MB), {LEAVES} leaves, {RUNS} runs + 1 warm-up")
    ingest_rows, query_rows, warnings = [], [], []
    con = duckdb.connect()  # in-memory
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(f"duckdb threads: {threads}")

    os.sync()
    group, duck, never = [], [], []
    for k in range(INGEST_RUNS):
        print(f"\n## Ingest, round {k + 1} of {INGEST_RUNS}")
        with cluster("group") as d:
            group.append(ingest(d))
        duck.append(duck_load(con, DATA))
        print(f"  duckdb: loaded in {duck[-1]:.2f} s")
        with cluster("never") as d:
            never.append(ingest(d))
    secs = statistics.median(s for s, _, _ in group)
    rows = group[0][1]
    printed = statistics.median(p for _, _, p in group)
    dsecs = statistics.median(duck)
    nsecs_never = statistics.median(s for s, _, _ in never)
    rows_never = never[0][1]
    printed_never = statistics.median(p for _, _, p in never)

    with cluster("group") as d:
        print("\n## Ingest for the queries (not timed)")
        ingest(d)
        drows = con.execute("SELECT count(*) FROM events").fetchone()[0]
        time_type = column_type(con, "time")
        print(f"  duckdb: {drows} rows; `time` inferred as {time_type}")
        ingest_rows.append((f"ingest rows/s, wall clock (same file), median of {INGEST_RUNS}",
                            rows / secs, drows / dsecs))
        ingest_rows.append(("ingest rows/s, as printed by scubactl", printed, None))
        if drows != rows:
            warnings.append(f"row counts differ: scuba {rows}, duckdb {drows}")
        if time_type.startswith("TIMESTAMP"):
            note = f"DuckDB queried the table loaded from the original file (`time` {time_type})."
        else:
            with tempfile.TemporaryDirectory() as tmp:
                norm = os.path.join(tmp, "normalized.jsonl")
                t = time.perf_counter()
                normalize(DATA, norm)
                prep = time.perf_counter() - t
                nsecs = duck_load(con, norm)
            time_type = column_type(con, "time")
            note = (f"DuckDB's read_json_auto does not infer a timestamp for the mixed-format "
                    f"`time`, so its query table was loaded from a normalized copy written by "
                    f"compare.py (`time` as an ISO string in every row; written in {prep:.1f} s, "
                    f"not counted), where `time` is {time_type}.")
            print(f"  duckdb: normalized copy loaded in {nsecs:.2f} s")
            ingest_rows.append(("ingest rows/s, DuckDB from the normalized copy", rows / secs, drows / nsecs))
        print(f"  {note}")

        print("\n## Queries (median seconds)")
        base, _, err = median_of(lambda: scuba_query(d, "SELECT 1"))
        if err:
            warnings.append(f"scuba failed on `SELECT 1`:\n    {err}")
        else:
            print(f"  SELECT 1 (scubactl start-up baseline): {base:.3f} s")
        query_rows.append(("`SELECT 1` (scubactl start-up baseline), ms", None if err else base * 1e3, None))
        for name, ssql, dsql in QUERIES:
            s, srows, err = median_of(lambda: scuba_query(d, ssql))
            q, drows_, _ = median_of(lambda: duck_query(con, dsql or ssql))
            if err:
                warnings.append(f"scuba failed on {name!r}: {ssql}\n    {err}")
            elif (diff := difference(srows, drows_)):
                warnings.append(f"answers differ for {name!r}: {diff}")
            r, rerr = scuba_repeat(d, ssql)
            print(f"  {name}: scuba {'ERROR' if err else f'{s:.3f} s'} "
                  f"(open connection p50 {'ERROR' if rerr else f'{r:.4f} s'}), duckdb {q:.4f} s")
            query_rows.append((f"{name}, ms (whole `scubactl query` process)", None if err else s * 1e3, q * 1e3))
            query_rows.append((f"{name}, ms (open connection, p50 of {REPEAT})", None if rerr else r * 1e3, q * 1e3))

    ingest_rows += [
        (f"ingest rows/s, wall clock, --fsync never, median of {INGEST_RUNS}",
         rows_never / nsecs_never, None),
        ("ingest rows/s, as printed, --fsync never", printed_never, None),
        ("log cost: wall-clock rows/s with fsync group ÷ with never",
         (rows / secs) / (rows_never / nsecs_never), None)]

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print(f"\n## Results ({rows} rows)\n\n{note}\nIngest: higher is better. "
          "Queries: lower is better; ratio = scuba / duckdb.\n")
    fmt = lambda v: "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.3g}")
    print("| measure | scuba | duckdb | ratio |\n|---|---:|---:|---:|")
    for m, s, q in ingest_rows + query_rows:
        ratio = f"{s / q:.2f}" if s is not None and q else "—"
        print(f"| {m} | {fmt(s)} | {fmt(q)} | {ratio} |")
    for w in warnings:
        print(f"\nWARNING: {w}")


if __name__ == "__main__":
    main()
