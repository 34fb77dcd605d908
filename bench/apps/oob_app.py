"""Benchmark app for out-of-band GC: a large long-lived heap and cyclic garbage.

At import it builds a table of RECORDS records (dicts holding lists: about 4 tracked
objects each; 250 000 records = ~1 M tracked objects, the size at which DESIGN.md measured
~500 ms full collections), as a real app's modules, caches and ORM metadata would.

GET /garbage  builds CYCLES rows (3 tracked objects each) that reference their session,
              which lists them (ORM rows and their session, say), alive until the response
              is built: cyclic garbage once the request ends. With OOB_BENCH_ACYCLIC=1 the
              rows do not reference their session (no cycle), which is kept in
              AFTER_RESPONSE: the same objects, left for oob_latency.py's floor worker to
              free by reference counting once the connection is closed, where smartspawn's
              worker collects them.
GET /hello    a constant body: the per-request cost of the server itself.
GET /work     /hello's body with the out-of-band work header (X-Smartspawn-OOB-Work:
              true): the worker runs on_oob_work once it has answered.
"""
import json
import os

RECORDS = int(os.environ.get("OOB_BENCH_RECORDS", "250000"))
CYCLES = int(os.environ.get("OOB_BENCH_CYCLES", "1000"))
ACYCLIC = os.environ.get("OOB_BENCH_ACYCLIC") == "1"
AFTER_RESPONSE = []  # OOB_BENCH_ACYCLIC: the sessions the server frees after the response

TABLE = [{"id": i, "tags": ["t%d" % (i % 7), "u%d" % (i % 11)], "pos": [i, -i],
          "meta": {"k": i % 13}} for i in range(RECORDS)]


class Row:
    def __init__(self, session, n):
        self.session = session
        self.values = [n, n * 2, str(n)]
        self.extra = {"n": n}


def garbage():
    session = {"rows": []}
    owner = None if ACYCLIC else session  # row -> session -> rows -> row: a cycle
    for n in range(CYCLES):
        session["rows"].append(Row(owner, n))
    if ACYCLIC:
        AFTER_RESPONSE.append(session)
    return {"rows": len(session["rows"]), "first": TABLE[CYCLES % RECORDS]["id"]}


def app(environ, start_response):
    if environ["PATH_INFO"] == "/garbage":
        body = json.dumps(garbage()).encode()
    else:
        body = b"hello\n"
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    if environ["PATH_INFO"] == "/work":
        headers.append(("X-Smartspawn-OOB-Work", "true"))
    start_response("200 OK", headers)
    return [body]
