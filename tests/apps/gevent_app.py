"""Test app for smartspawn.GeventWorker: a WSGI app that relies on gevent's patching.

At import: "<pid> <patched>" in imports.txt, <patched> telling whether socket was already
monkey-patched when the app was imported (the preloader patches first).

GET /             -> {"pid", "patched", "cooperative"}: two 0.2 s sleeps in greenlets take
                     0.2 s together, not 0.4 (time.sleep is gevent's)
GET /garbage?N    -> makes N reference cycles
GET /gc           -> {"pid", "in_request": [generations], "between": [generations]}
GET /oob?VALUE    -> 200 with the header X-Smartspawn-OOB-Work: VALUE
GET /sleep?S      -> sleeps S seconds first (a line in sleeping.txt when it starts)
"""
import gc
import json
import os
import time

import gevent
from gevent import monkey

TEST_DIR = os.environ["TEST_DIR"]
PATCHED = monkey.is_module_patched("socket") and monkey.is_module_patched("time")
COLLECTIONS = []  # (pid, generation, in_request)
IN_FLIGHT = 0

with open(os.path.join(TEST_DIR, "imports.txt"), "a") as f:
    f.write("%d %s\n" % (os.getpid(), PATCHED))


def on_gc(phase, info):
    if phase == "start":
        COLLECTIONS.append((os.getpid(), info["generation"], IN_FLIGHT > 0))


gc.callbacks.append(on_gc)


def respond(start_response, body, headers=()):
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data))), *headers])
    return [data]


def route(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    pid = os.getpid()
    if path == "/garbage":
        for _ in range(int(query or 1000)):
            a = []
            b = [a]
            a.append(b)
        return respond(start_response, {"pid": pid})
    if path == "/gc":
        mine = [(g, inside) for p, g, inside in COLLECTIONS if p == pid]
        return respond(start_response, {"pid": pid,
                                        "in_request": [g for g, i in mine if i],
                                        "between": [g for g, i in mine if not i]})
    if path == "/oob":
        return respond(start_response, {"oob": True},
                       [("X-Smartspawn-OOB-Work", query or "true")])
    if path == "/sleep":
        with open(os.path.join(TEST_DIR, "sleeping.txt"), "a") as f:
            f.write("%d\n" % pid)
        time.sleep(float(query or 1))
        return respond(start_response, {"pid": pid})
    started = time.monotonic()
    gevent.joinall([gevent.spawn(time.sleep, 0.2) for _ in range(2)])
    return respond(start_response, {"pid": pid, "patched": PATCHED,
                                    "cooperative": time.monotonic() - started < 0.35})


def app(environ, start_response):
    global IN_FLIGHT
    IN_FLIGHT += 1
    try:
        return route(environ, start_response)
    finally:
        IN_FLIGHT -= 1
