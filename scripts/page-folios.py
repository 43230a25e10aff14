#!/usr/bin/env python3
"""Which folios hold a file's page cache: maps the file, touches every page, then reads
each page's frame from /proc/self/pagemap and its flags from /proc/kpageflags (root only).
Usage: scripts/page-folios.py FILE [BYTES]   (docs/BENCHMARKS.md, "Page-cache folios")"""
import ctypes
import os
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(sys.argv[1], os.O_RDONLY)
    size = os.fstat(fd).st_size
    if len(sys.argv) > 2:
        size = min(size, int(sys.argv[2]))
    addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    if addr in (None, ctypes.c_void_p(-1).value):
        sys.exit(f"mmap: {os.strerror(ctypes.get_errno())}")
    for off in range(0, size, PAGE):
        ctypes.c_ubyte.from_address(addr + off).value  # fault the page in
    heads = tails = single = absent = 0
    with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as kflags:
        for off in range(0, size, PAGE):
            pagemap.seek((addr + off) // PAGE * 8)
            entry = struct.unpack("Q", pagemap.read(8))[0]
            if not entry >> 63 & 1:
                absent += 1
                continue
            kflags.seek((entry & ((1 << 55) - 1)) * 8)
            flags = struct.unpack("Q", kflags.read(8))[0]
            if flags >> KPF_COMPOUND_HEAD & 1:
                heads += 1
            elif flags >> KPF_COMPOUND_TAIL & 1:
                tails += 1
            else:
                single += 1
    print(f"pages={size // PAGE} large_folios={heads} pages_in_large_folios={heads + tails} "
          f"single_pages={single} not_present={absent}")


if __name__ == "__main__":
    main()
