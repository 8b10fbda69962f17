"""Does a DuckDB load slow the scuba load after it? Alternates, in one
process as benches/compare.py does: a scuba ingest into a fresh 4-leaf
cluster, a DuckDB load of the same file (kept in the open connection), and
another scuba ingest. Prints each ingest's wall time and the CPU its servers
used (centiseconds, /proc/PID/stat).

Usage: benches/.venv/bin/python benches/after-duckdb.py SCUBACTL FILE
"""
import duckdb, subprocess, sys, time, tempfile, os, re

from procstat import servers_cs
B, DATA = sys.argv[1], sys.argv[2]
def ingest():
    d = tempfile.mkdtemp()
    subprocess.run([B, "cluster", "up", "--leaves", "4", "--dir", d], capture_output=True, check=True)
    time.sleep(0.5)
    open(DATA, "rb").read()
    s0 = servers_cs(d)
    with open(DATA, "rb") as f:
        t = time.perf_counter()
        p = subprocess.run([B, "ingest", "--table", "events", "--dir", d], stdin=f, capture_output=True, text=True)
        w = time.perf_counter() - t
    s = servers_cs(d) - s0
    subprocess.run([B, "cluster", "down", "--dir", d], capture_output=True)
    subprocess.run(["rm", "-rf", d])
    return w, s
con = duckdb.connect()
for k in range(3):
    w, s = ingest(); print(f"plain      wall {w:.2f} s servers_cs {s}", flush=True)
    open(DATA, "rb").read()
    t = time.perf_counter(); con.execute(f"CREATE OR REPLACE TABLE events AS SELECT * FROM read_json_auto('{DATA}')"); dl = time.perf_counter() - t
    w, s = ingest(); print(f"after duck wall {w:.2f} s servers_cs {s}   (duck load {dl:.2f} s)", flush=True)
