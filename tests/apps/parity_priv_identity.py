"""Test app: GET / -> the serving worker's identity as JSON.

{"pid", "uid", "euid", "gid", "egid", "groups"}; it writes no file, so it runs as any user.
"""
import json
import os


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(),
                       "gid": os.getgid(), "egid": os.getegid(),
                       "groups": sorted(os.getgroups())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
