"""Test app: responses carrying malformed X-Smartspawn-OOB-Work headers (chaos suite).

GET /?N   -> 200 with the Nth case of CASES below (name spelling, value); N out of range: no
             header. The body says which case it was.
GET /404?N, GET /500?N -> the same header on an error response the app returns itself.
"""
import json
import os

TEST_DIR = os.environ["TEST_DIR"]

with open(os.path.join(TEST_DIR, "imports.txt"), "a") as f:
    f.write("%d\n" % os.getpid())

# (header name as the app spells it, [values]); several values mean repeated headers.
# WSGI header values are latin-1 `str`s: non-ASCII travels as its latin-1 code points.
CASES = [
    ("X-Smartspawn-OOB-Work", ["maybe"]),
    ("X-Smartspawn-OOB-Work", [""]),
    ("X-Smartspawn-OOB-Work", ["tru e"]),
    ("X-Smartspawn-OOB-Work", [" true "]),
    ("X-Smartspawn-OOB-Work", ["TRUE\t"]),
    ("X-Smartspawn-OOB-Work", ["1 1"]),
    ("X-Smartspawn-OOB-Work", ["yes, no"]),
    ("X-Smartspawn-OOB-Work", ["-1"]),
    ("X-Smartspawn-OOB-Work", ["0x1"]),
    ("X-Smartspawn-OOB-Work", ["1" * 16384]),  # the client reads lines up to 64 KiB
    ("X-Smartspawn-OOB-Work", ["tr\xfce"]),
    ("X-Smartspawn-OOB-Work", ["\xff\xfe\xe9\xe0"]),
    ("X-Smartspawn-OOB-Work", ["true".encode("utf-8").decode("latin-1") + "\u00a0"]),
    ("x-smartspawn-oob-work", ["maybe"]),
    ("X-SMARTSPAWN-OOB-WORK", ["nope"]),
    ("X-Smartspawn-OOB-Work", ["true", "maybe", ""]),
    ("X-Smartspawn-OOB-Work", ["yes", "yes"]),
]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    try:
        index = int(environ.get("QUERY_STRING") or -1)
    except ValueError:
        index = -1
    status = {"/404": "404 Not Found", "/500": "500 Internal Server Error"}.get(path, "200 OK")
    body = json.dumps({"pid": os.getpid(), "case": index}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if 0 <= index < len(CASES):
        name, values = CASES[index]
        headers += [(name, value) for value in values]
    start_response(status, headers)
    return [body]
