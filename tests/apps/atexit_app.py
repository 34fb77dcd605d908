"""Test app: registers an atexit handler at import, as an analytics or tracing flush does.

Each process that runs the handler appends its pid to atexit.txt.
GET / -> {"pid"}
"""
import atexit
import json
import os

TEST_DIR = os.environ["TEST_DIR"]


def flush():
    with open(os.path.join(TEST_DIR, "atexit.txt"), "a") as f:
        f.write("%d\n" % os.getpid())


atexit.register(flush)


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
