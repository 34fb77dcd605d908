"""Test app: requests stuck where a stack dump must find them.

GET /                -> {"pid"}
GET /stuck?S         -> sleeps S s inside stuck_in_the_export() -> {"pid"}; writes its
                        pid to $TEST_DIR/stuck as it starts
GET /extend?E&S      -> smartspawn.extend_deadline(E), then as /stuck?S
                        -> {"pid", "granted": what extend_deadline returned}
"""
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
    elif path == "/extend":
        extension, seconds = query.split("&")
        body["granted"] = smartspawn.extend_deadline(float(extension))
        stuck_in_the_export(float(seconds))
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
