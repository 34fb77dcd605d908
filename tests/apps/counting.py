"""Test app: records each import of its module body and tells who served a request.

GET /            -> {"pid", "ppid", "version", "uid"}
GET /sleep?S     -> sleeps S seconds first
GET /hang        -> never returns (for timeout tests)
"""
import json
import os
import time

VERSION = "v1"
TEST_DIR = os.environ["TEST_DIR"]

with open(os.path.join(TEST_DIR, "imports.txt"), "a") as f:
    f.write("%d\n" % os.getpid())


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    elif path == "/hang":
        while True:
            time.sleep(1)
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "version": VERSION,
                       "uid": os.getuid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
