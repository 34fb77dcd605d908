"""WSGI benchmark app for bench/eventloop.py (smartspawn.GeventWorker, -k gevent): the
endpoints of eventloop_fastapi.py, the same heaps (eventloop_core.py).

GET /  hello;  /pid;  /hold?fifo=PATH (blocks the hub);  /cache[?lookups=K];  /garbage
"""
import json
from urllib.parse import parse_qs

import eventloop_core


def app(environ, start_response):
    path, query = environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", "")
    if path == "/pid":
        payload = eventloop_core.identity()
    elif path == "/hold":
        payload = eventloop_core.hold(parse_qs(query)["fifo"][0])
    elif path == "/cache":
        payload = eventloop_core.cache(query)
    elif path == "/garbage":
        payload = eventloop_core.garbage()
    else:
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(eventloop_core.HELLO)))])
        return [eventloop_core.HELLO]
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
