"""Test app for smartspawn.GeventWorker: resolves a name at import, which starts a thread
of gevent's hub pool (its default resolver runs getaddrinfo there).

GET / -> {"pid"}
"""
import json
import os
import socket

socket.getaddrinfo("localhost", 80)


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
