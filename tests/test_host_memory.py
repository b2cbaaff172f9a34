"""keep_freed_host_memory: large allocations come from glibc's heap instead of fresh mmaps (checked in a fresh
interpreter with glibc's own statistics, mallinfo2)."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util, sys
import numpy as np
libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2"); sys.exit(0)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    from jaxrec.scale.host_memory import keep_freed_host_memory
    assert keep_freed_host_memory()
before = libc.mallinfo2()
block = np.ones(64 * 2**20, np.uint8)  # 64 MiB: above glibc's largest mmap threshold
after = libc.mallinfo2()
print(after.hblks - before.hblks, after.hblkhd - before.hblkhd, after.uordblks - before.uordblks)
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    if out.strip() == "no-mallinfo2":
        pytest.skip("not glibc >= 2.33 (no mallinfo2): keep_freed_host_memory does nothing here")
    return [int(x) for x in out.split()]


def test_large_blocks_come_from_the_heap_after_keep_freed_host_memory():
    # changes of glibc's counters across one 64 MiB allocation: mmapped blocks and bytes, bytes in use on the heap
    mmapped_blocks, mmapped_bytes, _ = probe("default")
    assert mmapped_blocks == 1 and mmapped_bytes >= 64 * 2**20  # glibc's default: a fresh mmap per large block
    mmapped_blocks, mmapped_bytes, heap_bytes = probe("keep")
    assert (mmapped_blocks, mmapped_bytes) == (0, 0)
    assert heap_bytes >= 64 * 2**20
