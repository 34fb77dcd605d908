"""Test app for gc_freeze.

At import, a garbage cycle (made with the collector off, so that it is still there when
the import ends, on every CPython); after every fork, the preloader allocates an object
(as a library's at-fork handler might). Each worker says whether the garbage was freed and
whether the objects it inherited are frozen.

GET / -> {"pid", "garbage_freed": bool, "inherited": N, "frozen": N}
"""
import gc
import json
import os
import weakref

INHERITED = []


class Late:
    pass


class Cycle:
    def __init__(self):
        self.me = self


gc.disable()
GARBAGE = weakref.ref(Cycle())  # a cycle: only the collector frees it
gc.enable()


os.register_at_fork(after_in_parent=lambda: INHERITED.append(Late()))


def app(environ, start_response):
    tracked = {id(obj) for obj in gc.get_objects()}  # the permanent generation not included
    body = json.dumps({"pid": os.getpid(), "garbage_freed": GARBAGE() is None,
                       "inherited": len(INHERITED),
                       "frozen": sum(id(obj) not in tracked for obj in INHERITED)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
