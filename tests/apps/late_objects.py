"""Test app: the preloader allocates an object after every fork (as a library's at-fork
handler might); each worker says whether the ones it inherited are frozen.

GET / -> {"pid", "inherited": N, "frozen": N}
"""
import gc
import json
import os

INHERITED = []


class Late:
    pass


os.register_at_fork(after_in_parent=lambda: INHERITED.append(Late()))


def app(environ, start_response):
    tracked = {id(obj) for obj in gc.get_objects()}  # the permanent generation not included
    body = json.dumps({"pid": os.getpid(), "inherited": len(INHERITED),
                       "frozen": sum(id(obj) not in tracked for obj in INHERITED)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
