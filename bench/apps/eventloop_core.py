"""What the event-loop benchmark apps share (bench/eventloop.py): one module, three heaps.

Importing it imports the three sync benchmark apps, each sized by its own environment
variables, so that one server can be given exactly the heap its measure needs:

- heavy_import (HEAVY_IMPORT_RECORDS, HEAVY_IMPORT_SECONDS): the ~1 s, ~140 MB import that
  a plain worker pays again on every spawn (set both to 0 to skip it);
- oob_app (OOB_BENCH_RECORDS, OOB_BENCH_CYCLES): the ~1 M tracked objects that make a
  full collection slow, and the request that leaves cyclic garbage;
- lazy_cache (LAZY_CACHE_RECORDS): the ~100 MB cache a worker builds on its first /cache.

The endpoints of eventloop_fastapi.py (ASGI) and eventloop_wsgi.py (WSGI, for gevent)
call the functions below; all of them run on the worker's loop or hub (none in a thread).
"""
import os

import heavy_import
import lazy_cache
import oob_app

HELLO = b"Hello, World!\n"


def identity():
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "import_seconds": heavy_import.IMPORT_SECONDS,
            "records": len(heavy_import.TABLE)}


def hold(fifo):
    """Block the whole process (the loop, the hub: os.open and os.read are never
    cooperative) until the benchmark writes a byte into the named pipe `fifo`. Before
    blocking, write our pid into `fifo`.pid: then the benchmark knows which worker is held."""
    mark = fifo + ".pid"
    with open(mark + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(mark + ".tmp", mark)
    fd = os.open(fifo, os.O_RDONLY)  # blocks until the benchmark opens it for writing
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return {"pid": os.getpid(), "released": True}


def cache(query):
    """lazy_cache's /cache, as a dict (query: "", "lookups=K" or "all")."""
    built = not lazy_cache.CACHE
    if built:
        lazy_cache.build_cache()
    lookups = int(query.split("=", 1)[1]) if query.startswith("lookups=") else \
        lazy_cache.DEFAULT_LOOKUPS
    checksum = 0.0
    index = lazy_cache.CACHE["index"]
    for _ in range(lookups):
        record = index["item-%07d" % lazy_cache.random.randrange(lazy_cache.RECORDS)]
        checksum += record["price"] + len(record["tags"]) + record["stock"]["count"]
    return {"pid": os.getpid(), "ppid": os.getppid(), "built": built,
            "built_by": lazy_cache.CACHE["built_by"],
            "build_seconds": lazy_cache.CACHE["build_seconds"],
            "records": len(lazy_cache.CACHE["records"]), "checksum": round(checksum, 2)}


def garbage():
    """oob_app's /garbage: OOB_BENCH_CYCLES rows in reference cycles, garbage once done."""
    return oob_app.garbage()
