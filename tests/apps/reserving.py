"""Test app: reserves 256 GiB of address space at import and uses one page of it, as a big
calloc or an allocator's reservation does (MAP_NORESERVE: no memory is committed).

GET / -> {"pid"}
"""
import json
import mmap
import os

MAP_NORESERVE = 0x4000  # Linux; the mmap module names it from Python 3.13
RESERVED = mmap.mmap(-1, 256 << 30,
                     flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
RESERVED[0] = 1


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
