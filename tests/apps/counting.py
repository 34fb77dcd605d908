"""Test app: records each import of its module body and tells who served a request.

GET /            -> {"pid", "ppid", "version", "uid"}
GET /sleep?S     -> sleeps S seconds first
GET /hang        -> never returns (for timeout tests)
GET /cache       -> builds a lazy in-memory cache on first use; says who built it
"""
import json
import os
import time

VERSION = "v1"
TEST_DIR = os.environ["TEST_DIR"]

CACHE = {}

with open(os.path.join(TEST_DIR, "imports.txt"), "a") as f:
    f.write("%d\n" % os.getpid())


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    elif path == "/hang":
        while True:
            time.sleep(1)
    elif path == "/cache" and not CACHE:
        CACHE["built_by"] = os.getpid()
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "version": VERSION,
                       "uid": os.getuid(), "cache_built_by": CACHE.get("built_by")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
