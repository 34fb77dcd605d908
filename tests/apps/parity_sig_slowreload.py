"""Test app (tests/parity/test_signals.py): counting.py, plus a slow import on demand.

While the file $TEST_DIR/slow_import exists, importing this module first sleeps for the
number of seconds it holds: a test writes it before a HUP to make the reload's import slow.

GET /          -> {"pid", "version"}
GET /sleep?S   -> sleeps S seconds first
"""
import json
import os
import time

VERSION = "v1"
FLAG = os.path.join(os.environ["TEST_DIR"], "slow_import")

if os.path.exists(FLAG):
    with open(FLAG) as f:
        time.sleep(float(f.read() or 2))


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    body = json.dumps({"pid": os.getpid(), "version": VERSION}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
