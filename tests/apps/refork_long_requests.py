"""Test app: long requests, of two kinds, and an optional big heap.

GET /            -> {"pid"}
GET /sleep?S     -> sleeps S seconds, then {"pid"}
GET /stream?S    -> streams a chunk every 0.25 s for S seconds, then {"pid"}
A long request appends "<pid>" to TEST_DIR/started.txt as it begins.
BIG_HEAP=N (environment): about N objects built at import, half of them floats in one
list, half in N // 6 lists of two floats (each list tracked by the collector).
"""
import json
import os
import time

TEST_DIR = os.environ["TEST_DIR"]
SIZE = int(os.environ.get("BIG_HEAP", "0"))
FLOATS = [float(i) for i in range(SIZE // 2)]
PAIRS = [[float(i), float(-i)] for i in range(SIZE // 6)]


def started():
    with open(os.path.join(TEST_DIR, "started.txt"), "a") as f:
        f.write("%d\n" % os.getpid())


def pid_body():
    return json.dumps({"pid": os.getpid()}).encode()


def stream(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        yield b" "
    yield pid_body()


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING") or "1"
    if path == "/stream":
        started()
        start_response("200 OK", [("Content-Type", "application/json")])
        return stream(float(query))
    if path == "/sleep":
        started()
        time.sleep(float(query))
    body = pid_body()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
