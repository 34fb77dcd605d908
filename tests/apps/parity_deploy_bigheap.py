"""Test app with a big heap: builds BIGHEAP_ITEMS small Python objects at import.

3,000,000 items are about 540 MB (two objects each: a list and a str, plus an int).
Only the first MAX_BUILDS imports in a server's directory build it (a preloader or a
`--preload` master, once per generation); later ones fail with an ImportError: should every
worker import the app itself (direct spawning), 96 workers must not ask for 52 GB.

GET /       -> {"pid", "version", "items"}
GET /sleep  -> the same after sleeping QUERY_STRING seconds (default 1)
"""
import gc
import json
import os
import time

VERSION = "v1"
MAX_BUILDS = 4


def claim_a_build():
    for i in range(MAX_BUILDS):
        try:
            os.close(os.open(os.path.join(os.environ["TEST_DIR"], "bigheap-build-%d" % i),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            pass
    raise ImportError("parity_deploy_bigheap: imported more than %d times in this server: "
                      "workers import the app themselves; refusing to build the heap"
                      % MAX_BUILDS)


claim_a_build()
DATA = [[i, str(i)] for i in range(int(os.environ.get("BIGHEAP_ITEMS", "3000000")))]
# Keep the heap out of the collector's way in every process that shares it (smartspawn does
# this itself; plain gunicorn with --preload would otherwise copy the pages on a full GC).
gc.freeze()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    body = json.dumps({"pid": os.getpid(), "version": VERSION, "items": len(DATA)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
