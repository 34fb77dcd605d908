"""Test app for the memory-aware lifecycle: leaks on demand, holds fork gates.

GET /            -> {"pid"}
GET /leak?KB     -> keeps KB kibibytes of fresh memory for the life of the process
GET /gate?S      -> starts a thread that holds smartspawn.prevent_fork() for S seconds,
                    then prints "gate released by PID" to stderr (the server log); the
                    request itself takes 0.3 s, so that concurrent ones reach every worker
GET /unsafe?PID  -> calls smartspawn.no_longer_fork_safe() if this is process PID
                    -> {"pid", "marked"}; takes 0.3 s, as /gate

SLOW_IMPORT (environment): seconds of CPU work at import (a worker that boots slowly).
"""
import json
import os
import sys
import threading
import time

import smartspawn

LEAKED = []

_deadline = time.monotonic() + float(os.environ.get("SLOW_IMPORT", "0"))
while time.monotonic() < _deadline:
    pass


def hold_gate(seconds):
    with smartspawn.prevent_fork():
        time.sleep(seconds)
        print("gate released by %d" % os.getpid(), file=sys.stderr, flush=True)


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    body = {"pid": os.getpid()}
    if path == "/leak":
        LEAKED.append(bytearray(os.urandom(1024)) * int(query or 1))
    elif path == "/gate":
        threading.Thread(target=hold_gate, args=(float(query or 1),), daemon=True).start()
        time.sleep(0.3)
    elif path == "/unsafe":
        body["marked"] = os.getpid() == int(query)
        if body["marked"]:
            smartspawn.no_longer_fork_safe()
        time.sleep(0.3)
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
