"""Test app: long requests beside short ones, to see who waits for whom.

GET /                 -> {"pid"}
GET /garbage?N        -> makes N reference cycles -> {"pid"}
GET /stream?S         -> streams its pid on the first line, then one "." every 0.1 s for S s
POST /upload?ID       -> writes its pid to $TEST_DIR/upload-ID before it reads the body,
                         then reads it all -> {"pid", "received": bytes}
"""
import json
import os
import time


def make_cycles(n):
    for _ in range(n):
        a = []
        a.append([a])


def stream(seconds):
    yield b"%d\n" % os.getpid()
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
        yield b"."


def upload(environ, name):
    with open(os.path.join(os.environ["TEST_DIR"], "upload-" + name), "w") as f:
        f.write(str(os.getpid()))
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    return {"pid": os.getpid(), "received": len(body)}


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream(float(query))
    body = {"pid": os.getpid()}
    if path == "/garbage":
        make_cycles(int(query or 100))
    elif path == "/upload":
        body = upload(environ, query)
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
