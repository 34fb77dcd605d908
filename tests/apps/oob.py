"""Test app for out-of-band GC: makes cyclic garbage and records where each collection ran.

A gc callback records each collection as "in_request" when a frame of gunicorn's own
connection handling (the sync or gthread worker's `handle`) is on any thread's stack,
else as "between" requests.

GET /                -> {"pid"}
GET /garbage?N       -> makes N reference cycles (two tracked lists each)
GET /gc              -> {"pid", "in_request": [generations], "between": [generations],
                         "requests": requests this worker began, this one included}
GET /oob?VALUE       -> 200 with the header OOB_HEADER (env, default X-Smartspawn-OOB-Work)
GET /oob-error?VALUE -> 500 with that header
GET /slow-oob?S      -> sleeps S seconds, then 200 with that header set to "true"
GET /big?N           -> N cycles in one request -> {"growth": peak RSS growth in bytes}
GET /big-nogc?N      -> the same with the collector disabled during the request
GET /sleep?S         -> sleeps S seconds first
"""
import gc
import json
import os
import sys
import time

from gunicorn.workers import gthread, sync

OOB_HEADER = os.environ.get("OOB_HEADER", "X-Smartspawn-OOB-Work")
REQUEST_CODE = {sync.SyncWorker.handle.__code__, gthread.ThreadWorker.handle.__code__}
COLLECTIONS = []  # (pid, generation, in_request); the preloader's are not the worker's
REQUESTS = {}  # pid -> requests begun (the preloader forks with an empty count)


def serving():
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code in REQUEST_CODE:
                return True
            frame = frame.f_back
    return False


def on_gc(phase, info):
    if phase == "start":
        COLLECTIONS.append((os.getpid(), info["generation"], serving()))


gc.callbacks.append(on_gc)


def make_cycles(n, watch=None):
    for i in range(n):
        a = []
        b = [a]
        a.append(b)
        if watch is not None and i % 5000 == 0:
            watch()


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def big(n):
    start = peak = rss()

    def watch():
        nonlocal peak
        peak = max(peak, rss())
    make_cycles(n, watch)
    watch()
    return peak - start


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    status, headers, body = "200 OK", [], {"pid": os.getpid()}
    REQUESTS[os.getpid()] = REQUESTS.get(os.getpid(), 0) + 1
    if path == "/garbage":
        make_cycles(int(query or 1000))
    elif path == "/gc":
        mine = [c for c in COLLECTIONS if c[0] == os.getpid()]
        body["in_request"] = [gen for _, gen, inside in mine if inside]
        body["between"] = [gen for _, gen, inside in mine if not inside]
        body["requests"] = REQUESTS[os.getpid()]
    elif path == "/slow-oob":
        time.sleep(float(query))
        headers.append((OOB_HEADER, "true"))
    elif path in ("/oob", "/oob-error"):
        headers.append((OOB_HEADER, query))
        if path == "/oob-error":
            status = "500 Internal Server Error"
    elif path == "/big":
        body["growth"] = big(int(query))
    elif path == "/big-nogc":
        gc.disable()
        try:
            body["growth"] = big(int(query))
        finally:
            gc.enable()
    elif path == "/sleep":
        time.sleep(float(query or 1))
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *headers])
    return [data]
