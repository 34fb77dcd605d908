"""Benchmark app that is expensive to import: ~1 s of real work and a ~140 MB heap.

Importing it does what a large web application does at import time: it imports a
handful of stdlib modules, then builds an in-memory table of records (dicts, lists,
strings: about 140 MB of Python objects with the defaults), derives lookup indexes from
it, and spends the rest of its time budget on CPU-bound warm-up work (JSON round trips of
slices of the table). No time.sleep(): the cost is real CPU and a real heap, so forking
from a process that already holds it is what is being compared.

Tunables (environment, read at import):

- HEAVY_IMPORT_RECORDS  number of records in the table (default 170000, ~140 MB);
- HEAVY_IMPORT_SECONDS  minimum import time, padded with warm-up work (default 1.0;
                        0 disables the padding).

Endpoints:

GET  /pid     -> {"pid", "ppid", "import_seconds", "records"}
GET  /sleep?S -> sleeps S seconds (default 1), then as /pid
POST /hold    -> streams one JSON line {"pid": ...} at once, then blocks reading the
                 request body (send it, or close the connection, to release the worker),
                 then streams "released"; a sync worker stays busy meanwhile
GET  /        -> "ok"
"""
import argparse  # noqa: F401  (imported for its import cost, like an app would)
import asyncio  # noqa: F401
import csv  # noqa: F401
import decimal  # noqa: F401
import email.parser  # noqa: F401
import http.client  # noqa: F401
import json
import logging.handlers  # noqa: F401
import os
import sqlite3  # noqa: F401
import statistics  # noqa: F401
import time
import urllib.request  # noqa: F401
import uuid  # noqa: F401
import xml.etree.ElementTree  # noqa: F401

_started = time.perf_counter()

RECORDS = int(os.environ.get("HEAVY_IMPORT_RECORDS", "170000"))
TARGET_SECONDS = float(os.environ.get("HEAVY_IMPORT_SECONDS", "1.0"))


def _build_table(n):
    records = []
    by_name = {}
    for i in range(n):
        rec = {
            "id": i,
            "name": "record-%08d" % i,
            "email": "user%d@example.com" % i,
            "score": i * 0.5,
            "tags": ["t%d" % (i % 97), "g%d" % (i % 13)],
            "parent": i // 2,
        }
        records.append(rec)
        by_name[rec["name"]] = rec
    return records, by_name


def _build_indexes(records):
    by_tag = {}
    for rec in records:
        for tag in rec["tags"]:
            by_tag.setdefault(tag, []).append(rec["id"])
    return by_tag


def _warm_up(records, deadline, max_rounds=10000):
    """CPU-bound warm-up until `deadline`: JSON round trips of 2000-record slices."""
    rounds = 0
    checksum = 0
    while time.perf_counter() < deadline and rounds < max_rounds:
        start = (rounds * 2000) % max(1, len(records) - 2000)
        blob = json.dumps(records[start:start + 2000])
        checksum += len(json.loads(blob))
        rounds += 1
    return rounds, checksum


TABLE, BY_NAME = _build_table(RECORDS)
BY_TAG = _build_indexes(TABLE)
WARM_UP_ROUNDS, _ = _warm_up(TABLE, _started + TARGET_SECONDS)
IMPORT_SECONDS = time.perf_counter() - _started


def _json(start_response, payload):
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _identity():
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "import_seconds": IMPORT_SECONDS, "records": len(TABLE)}


def _hold(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield (json.dumps({"pid": os.getpid()}) + "\n").encode()
    environ["wsgi.input"].read(1)  # blocks until the client sends a byte or hangs up
    yield b"released\n"


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/pid":
        return _json(start_response, _identity())
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
        return _json(start_response, _identity())
    if path == "/hold":
        return _hold(environ, start_response)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
