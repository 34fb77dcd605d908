"""Benchmark app whose workers keep filling lazy caches and touching shared objects.

- At import: a catalogue of CHURN_RECORDS records (default 60000 dicts of ints, floats,
  strings, lists: ~55 MB of refcounted objects), shared copy-on-write by every process
  forked after the import.
- GET /item/{k}, k in 1..CHURN_KEYS (default 1000): a memoized computation. The first
  request for k in a process builds MEMO[k], CHURN_ROWS (default 150) new row dicts
  derived from catalogue records (~55 KB); later requests for k, in that process or in
  any process forked from it afterwards, find it. The key space is bounded: a process
  that has seen every key holds the whole memo (~55 MB with the defaults) and stops
  growing. Every request then does CHURN_WORK (15000) loop steps of its own CPU work
  (~0.5 ms, touching nothing shared), returns the first 10 rows of MEMO[k] and reads
  CHURN_LOOKUPS (default 5) random catalogue records, as a real request reads what it
  cached and what it looks up: that writes the refcounts of those objects, i.e. the pages
  they live on (Python 3.11: no immortal objects), so pages shared with a parent become
  private again.
- GET /warm: builds every key of the memo in this process (for a reference process).

Answers are JSON with the worker's "pid" and "memo" (keys memoized in this process);
/item/{k} adds "key", "built" (this request built MEMO[k]), "rows" and a checksum.
"""
import json
import os
import random

RECORDS = int(os.environ.get("CHURN_RECORDS", "60000"))
KEYS = int(os.environ.get("CHURN_KEYS", "1000"))
ROWS = int(os.environ.get("CHURN_ROWS", "150"))
SHOWN = 10
LOOKUPS = int(os.environ.get("CHURN_LOOKUPS", "5"))
WORK = int(os.environ.get("CHURN_WORK", "15000"))
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def build_catalog():
    rng = random.Random(1234)
    return [{"id": i, "name": "item-%07d" % i, "price": round(rng.uniform(1, 1000), 2),
             "tags": [rng.choice(WORDS) + "-%d" % (i % 97), rng.choice(WORDS)],
             "description": " ".join(rng.choice(WORDS) for _ in range(12)) + " #%d" % i,
             "stock": {"warehouse": "wh-%d" % (i % 13), "count": i % 500}}
            for i in range(RECORDS)]


CATALOG = build_catalog()
MEMO = {}


def compute(key):
    """The memoized work for `key`: ROWS new rows derived from catalogue records."""
    start = key * 7919 % RECORDS
    records = [CATALOG[(start + n) % RECORDS] for n in range(ROWS)]
    return [{"id": record["id"], "label": "%s/%d" % (record["tags"][0], key),
             "score": record["price"] * (1 + n % 7) / 3.0, "rank": n,
             "note": record["description"][:24] + "#%d.%d" % (key, n)}
            for n, record in enumerate(records)]


def item(key):
    built = key not in MEMO
    if built:
        MEMO[key] = compute(key)
    checksum = float(sum(i * i % 7 for i in range(WORK)))  # the request's own work
    for _ in range(LOOKUPS):
        record = CATALOG[random.randrange(RECORDS)]
        checksum += record["price"] + len(record["tags"]) + record["stock"]["count"]
    return {"key": key, "built": built, "rows": MEMO[key][:SHOWN],
            "checksum": round(checksum, 2)}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/item/"):
        result = item(int(path[len("/item/"):]) % KEYS)
    elif path == "/warm":
        for key in range(KEYS):
            if key not in MEMO:
                MEMO[key] = compute(key)
        result = {}
    else:
        result = {}
    body = json.dumps({"pid": os.getpid(), "memo": len(MEMO), **result}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
