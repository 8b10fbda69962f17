"""CPU accounting from /proc, shared by the Python bench scripts (the
shell scripts' counterpart is lib.sh), and memory churn for the loads
that follow freed memory (`write_and_free`)."""
import contextlib, ctypes, mmap, os, subprocess

TICKS = os.sysconf("SC_CLK_TCK")


def servers_cs(d):
    """CPU centiseconds (user + system) the servers of the cluster in
    folder `d` have used so far."""
    pids = subprocess.run(["pgrep", "-f", f"serve --cluster {d}/"],
                          capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total * 100 // TICKS


def machine_cs():
    """(busy, steal, idle, iowait) centiseconds of the whole machine so far
    (/proc/stat: busy is user + nice + system + irq + softirq; steal is
    time the hypervisor gave to someone else)."""
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return tuple(v * 100 // TICKS for v in (f[0] + f[1] + f[2] + f[5] + f[6], f[7], f[3], f[4]))


def write_and_free(mib):
    """Writes `mib` MiB of fresh memory and frees it: on this VM freed
    memory goes back to the host (free page reporting), and the next touch
    of such a page is a host-side fault."""
    n = mib << 20
    m = mmap.mmap(-1, n)
    buf = (ctypes.c_char * n).from_buffer(m)
    ctypes.memset(buf, 1, n)
    del buf
    m.close()
