"""Test app with a gunicorn "dirty" app: the WSGI app asks the dirty pool for its pid.

GET /  -> {"pid", "version", "dirty_pid"}   (dirty_pid: the dirty worker that answered)
"""
import json
import os

from gunicorn.dirty import get_dirty_client
from gunicorn.dirty.app import DirtyApp

VERSION = "v1"


class Pid(DirtyApp):
    def whoami(self):
        return os.getpid()


def app(environ, start_response):
    dirty_pid = get_dirty_client(timeout=2.0).execute("app:Pid", "whoami")
    body = json.dumps({"pid": os.getpid(), "version": VERSION,
                       "dirty_pid": dirty_pid}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
