"""Whether a DuckDB load leaves work running after it returns.

Loads FILE into an in-memory table ROUNDS times, as benches/compare.py
does, and after each load prints how busy the whole machine was
(/proc/stat, centiseconds) in each quarter second of the next 1.5 s.
Run it with the venv benches/compare.sh makes:

  benches/.venv/bin/python benches/duckdb-idle.py FILE   (ROUNDS=3)
"""
import os
import sys
import time

import duckdb

from procstat import machine_cs

ROUNDS = int(os.environ.get("ROUNDS", 3))


def busy_cs():
    return machine_cs()[0]


con = duckdb.connect()
for rnd in range(1, ROUNDS + 1):
    t = time.perf_counter()
    con.execute(f"CREATE OR REPLACE TABLE events AS SELECT * FROM read_json_auto('{sys.argv[1]}')")
    print(f"round {rnd}: loaded in {time.perf_counter() - t:.2f} s")
    before = busy_cs()
    for k in range(1, 7):
        time.sleep(0.25)
        now = busy_cs()
        print(f"  +{k * 0.25:.2f} s: busy {now - before} cs")
        before = now
