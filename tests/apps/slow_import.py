"""Test app that takes IMPORT_SECONDS (default 5) to import."""
import os
import time

time.sleep(float(os.environ.get("IMPORT_SECONDS", "5")))


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
