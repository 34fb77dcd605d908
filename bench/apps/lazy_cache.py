"""Benchmark app with a lazy in-process cache: ~100 MB of Python objects built on first use.

Importing it is cheap. The first GET /cache in a process builds the cache: a list of
records (dicts holding ints, floats, strings and lists of strings) and an index dict
from name to record, about 100 MB of ordinary refcounted objects with the defaults.
Later requests, in that process or in any process forked from it after the build, find
it already there. Every /cache request also reads `lookups` random records through the
index, as a real request would: that touches their refcounts.

Tunables (environment, read at import): LAZY_CACHE_RECORDS (default 105000, ~100 MB).

GET /cache[?lookups=K | ?all] (all: also read every record, every field)
                       -> {"pid", "ppid", "built": true if this request built the cache,
                           "built_by": pid of the process that built it,
                           "build_seconds", "records", "checksum"}
GET /                  -> {"pid", "cached": bool}
"""
import json
import os
import random
import time

RECORDS = int(os.environ.get("LAZY_CACHE_RECORDS", "105000"))
DEFAULT_LOOKUPS = 20

CACHE = {}


def build_cache():
    started = time.monotonic()
    rng = random.Random(1234)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    records = []
    for i in range(RECORDS):
        records.append({
            "id": i,
            "name": "item-%07d" % i,
            "price": round(rng.uniform(1, 1000), 2),
            "tags": [rng.choice(words) + "-%d" % (i % 97), rng.choice(words)],
            "description": " ".join(rng.choice(words) for _ in range(12)) + " #%d" % i,
            "stock": {"warehouse": "wh-%d" % (i % 13), "count": i % 500},
        })
    index = {record["name"]: record for record in records}
    CACHE.update(records=records, index=index, built_by=os.getpid(),
                 build_seconds=time.monotonic() - started)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/cache":
        built = not CACHE
        if built:
            build_cache()
        query = environ.get("QUERY_STRING", "")
        lookups = int(query.split("=", 1)[1]) if query.startswith("lookups=") else \
            DEFAULT_LOOKUPS
        checksum = 0.0
        for _ in range(lookups):
            record = CACHE["index"]["item-%07d" % random.randrange(RECORDS)]
            checksum += record["price"] + len(record["tags"]) + record["stock"]["count"]
        if query == "all":  # every record and every field, through the index
            for name, record in CACHE["index"].items():
                checksum += (record["price"] + len(name) + len(record["description"])
                             + len(record["tags"][0]) + record["stock"]["count"])
        result = {"pid": os.getpid(), "ppid": os.getppid(), "built": built,
                  "built_by": CACHE["built_by"], "build_seconds": CACHE["build_seconds"],
                  "records": len(CACHE["records"]), "checksum": round(checksum, 2)}
    else:
        result = {"pid": os.getpid(), "cached": bool(CACHE)}
    body = json.dumps(result).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
