"""Test app for gc_freeze = "immortal".

RECORDS: 200,000 small dicts loaded at import. CACHE: the same kind of records, filled by
a worker's first /warm (after a refork, the template's own objects).

GET /read   -> {"pid", "grew": USS bytes added by reading every record three times}
GET /read?cache -> the same for CACHE
GET /immortal -> {"pid", "records": fraction of sampled records (and their fields) that
                  are immortal, "cache": the same for CACHE, or null if empty,
                  "cache_from": the pid that filled CACHE, "keys": the same for KEYED's
                  keys, "atoms": for ATOMS's keys and values (null if empty), "code":
                  for a nested function's code object and its constants}
GET /warm   -> fills CACHE once -> {"pid", "cache_from"}
GET /inherited -> {"pid", "native_attributes": how many classes' attributes hookstate had
                  read (functools.cache) when this worker's spawner was forked}
"""
import json
import os
import sys

import psutil

IMMORTAL = 1 << 31  # sys.getrefcount() of an immortal object, or more (3.12 to 3.14)


def records(count, prefix):
    return [{"id": i, "name": "%s %d" % (prefix, i), "price": i * 1.5,
             "tags": ["t%d" % (i % 7), "x" * (i % 5)]} for i in range(count)]


RECORDS = records(200_000, "item")
KEYED = {"key-%d" % i: i * 3 for i in range(2000)}  # str keys: not in gc.get_referents()
CACHE = []
CACHE_FROM = [None]
ATOMS = {}  # preloaded empty; /warm fills it with strings, which the collector never sees


def outer():
    def inner():  # its code object: in outer's co_consts, not in gc.get_referents()
        return 1
    return inner


def uss():
    return psutil.Process().memory_full_info().uss


def read(rows):
    before = uss()
    total = 0
    for _ in range(3):
        for row in rows:
            total += row["id"] + len(row["name"]) + int(row["price"]) + len(row["tags"])
    return uss() - before


def fraction(objects):
    return sum(sys.getrefcount(obj) >= IMMORTAL for obj in objects) / len(objects)


def immortal_fraction(rows):
    if not rows:
        return None
    sample = []
    for row in rows[::997]:
        sample += [row, row["name"], row["price"], row["tags"], row["tags"][0]]
    return fraction(sample)


def app(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    body = {"pid": os.getpid()}
    if path == "/read":
        body["grew"] = read(CACHE if query == "cache" else RECORDS)
    elif path == "/immortal":
        inner_code = next(c for c in outer.__code__.co_consts if hasattr(c, "co_code"))
        body.update(records=immortal_fraction(RECORDS), cache=immortal_fraction(CACHE),
                    cache_from=CACHE_FROM[0], keys=fraction(list(KEYED)),
                    atoms=fraction([*ATOMS, *ATOMS.values()]) if ATOMS else None,
                    code=fraction([inner_code, inner_code.co_consts]))
    elif path == "/inherited":
        from gunicorn_smartspawn.shared import hookstate
        body["native_attributes"] = hookstate.native_attributes.cache_info().currsize
    elif path == "/warm":
        if not CACHE:
            CACHE.extend(records(50_000, "cached"))
            CACHE_FROM[0] = os.getpid()
            ATOMS.update(("atom-%d" % i, "value %d" % i) for i in range(2000))
        body["cache_from"] = CACHE_FROM[0]
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
