#!/usr/bin/env python3
"""Ways to put a sealed block's bytes into shared memory, timed by CPU.

Writes FILES files of 8 MiB (26 by default: about the 213 MB of blocks the
2M sample events seal into) under /dev/shm, ROUNDS times each way, and
prints the CPU (user + system, centiseconds) each round took:

  write        write(2) in 1 MiB pieces, then a read-only shared mapping
               with MAP_POPULATE: what leaf/src/shm.rs does
  fallocate    posix_fallocate with room to spare, a read-write shared
               mapping with MAP_POPULATE, one copy in, truncated to length
  ftruncate    the same over a sparse file, pages faulted in by the copy

The first round of a run may pay for memory the kernel takes back from
this VM's host; compare the later ones.

Usage: python3 benches/shm-write.py      (FILES=26 ROUNDS=3)
"""
import mmap
import os
import resource

FILES = int(os.environ.get("FILES", 26))
ROUNDS = int(os.environ.get("ROUNDS", 3))
SIZE = 8 << 20
SLACK = 64 << 10
DATA = os.urandom(SIZE)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write(path):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    for off in range(0, SIZE, 1 << 20):
        os.write(fd, DATA[off:off + (1 << 20)])
    os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, SIZE, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ)
    os.close(fd)
    return m


def mapped(path, grow):
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC)
    grow(fd, SIZE + SLACK)
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if grow is allocate else 0)
    m = mmap.mmap(fd, SIZE + SLACK, flags, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:SIZE] = DATA
    os.ftruncate(fd, SIZE)
    os.close(fd)
    return m


def allocate(fd, n):
    os.posix_fallocate(fd, 0, n)


WAYS = {
    "write": write,
    "fallocate": lambda p: mapped(p, allocate),
    "ftruncate": lambda p: mapped(p, os.ftruncate),
}

for rnd in range(1, ROUNDS + 1):
    for name, way in WAYS.items():
        paths = [f"/dev/shm/scuba-shm-write-{os.getpid()}-{i}" for i in range(FILES)]
        before = cpu()
        maps = [way(p) for p in paths]
        spent = cpu() - before
        for m in maps:
            m.close()
        for p in paths:
            os.unlink(p)
        print(f"round {rnd} {name}: {spent * 100:.1f} cs")
