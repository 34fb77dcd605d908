"""Test app: requests stuck where a stack dump must find them.

GET /                -> {"pid"}
GET /stuck?S         -> sleeps S s inside stuck_in_the_export() -> {"pid"}; writes its
                        pid to $TEST_DIR/stuck as it starts
GET /extend?E&S      -> smartspawn.extend_deadline(E), then as /stuck?S
                        -> {"pid", "granted": what extend_deadline returned}
GET /extend-async?E&S -> the same from an async function run by asyncio.to_thread's
                        kind of thread (asgiref's async_to_sync, as Django's async views
                        under WSGI): a context copied from the request's
"""
import asyncio
import json
import os
import time

import smartspawn


def stuck_in_the_export(seconds):
    with open(os.path.join(os.environ["TEST_DIR"], "stuck"), "a") as f:
        f.write("%d\n" % os.getpid())
    time.sleep(seconds)


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    body = {"pid": os.getpid()}
    if path == "/stuck":
        stuck_in_the_export(float(query))
    elif path in ("/extend", "/extend-async"):
        extension, seconds = query.split("&")
        if path == "/extend":
            body["granted"] = smartspawn.extend_deadline(float(extension))
        else:
            body["granted"] = asyncio.run(asyncio.to_thread(smartspawn.extend_deadline,
                                                            float(extension)))
        stuck_in_the_export(float(seconds))
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
