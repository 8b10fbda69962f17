"""Does memory freed shortly before a load slow it? On this VM freed
memory goes back to the host (free page reporting: see
/sys/module/page_reporting), and the next touch of such a page is a
host-side fault. Alternates, each into a fresh 4-leaf cluster: a plain
load, and a load after this process wrote FREE_MIB of fresh memory, freed
it and slept SLEEP seconds. Prints each load's wall time and the CPU its
client and its servers used (centiseconds).

Usage: python3 benches/after-free.py SCUBACTL FILE [ROUNDS] [FREE_MIB] [SLEEP]
"""
import resource, shutil, subprocess, sys, tempfile, time

from procstat import servers_cs, write_and_free

B, DATA = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
FREE_MIB = int(sys.argv[4]) if len(sys.argv) > 4 else 8000
SLEEP = float(sys.argv[5]) if len(sys.argv) > 5 else 6.0


def load(free_first):
    d = tempfile.mkdtemp(prefix="scuba-after-free-")
    try:
        subprocess.run([B, "cluster", "up", "--leaves", "4", "--dir", d],
                       capture_output=True, check=True)
        with open(DATA, "rb") as f:  # in the page cache, as for every load
            while f.read(1 << 24):
                pass
        if free_first:
            write_and_free(FREE_MIB)
            time.sleep(SLEEP)
        s0, c0 = servers_cs(d), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(DATA, "rb") as f:
            t = time.perf_counter()
            subprocess.run([B, "ingest", "--table", "events", "--dir", d], stdin=f,
                           capture_output=True, check=True)
            wall = time.perf_counter() - t
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 100
        return wall, client, servers_cs(d) - s0
    finally:
        subprocess.run([B, "cluster", "down", "--dir", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


for k in range(ROUNDS):
    for free_first in (False, True):
        wall, client, servers = load(free_first)
        what = f"after {FREE_MIB} MiB freed, {SLEEP:g} s" if free_first else "plain"
        print(f"round {k + 1} {what}: wall {wall:.2f} s, client {client:.0f} cs, "
              f"servers {servers} cs", flush=True)
