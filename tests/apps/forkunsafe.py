"""Test app that, at import, connects to PEER_PORT on loopback and/or starts threads.

START_THREAD: a threading.Thread named cache-refresher. OPEN_PIPE: a pipe, kept. OPEN_FILE:
a file in TEST_DIR, kept. UDP_PORT: a UDP socket connected to it (a statsd client's).
ODD_THREAD: a thread that fork safety cannot look at (its _target raises).
NATIVE_THREAD: a thread that `threading` does not know (as a C library's would be).
`start_after_first_fork()` (for on_preload): a thread started once the preloader has
forked, as a library's at-fork handler might.
"""
import _thread
import os
import socket
import threading
import time

CONNECTION = None
if os.environ.get("PEER_PORT"):
    CONNECTION = socket.create_connection(("127.0.0.1", int(os.environ["PEER_PORT"])))

PIPE = os.pipe() if os.environ.get("OPEN_PIPE") else None
FILE = open(os.path.join(os.environ["TEST_DIR"], "app.log"), "a") \
    if os.environ.get("OPEN_FILE") else None

UDP = None
if os.environ.get("UDP_PORT"):
    UDP = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    UDP.connect(("127.0.0.1", int(os.environ["UDP_PORT"])))


class OddThread(threading.Thread):
    @property
    def _target(self):
        raise RuntimeError("not to be looked at")

    @_target.setter
    def _target(self, value):
        pass

    def run(self):
        time.sleep(3600)


if os.environ.get("ODD_THREAD"):
    OddThread(daemon=True).start()

if os.environ.get("START_THREAD"):
    threading.Thread(target=time.sleep, args=(3600,), name="cache-refresher",
                     daemon=True).start()

if os.environ.get("NATIVE_THREAD"):
    _thread.start_new_thread(time.sleep, (3600,))


def start_after_first_fork():
    started = []

    def start_once():
        if not started:
            started.append(threading.Thread(target=time.sleep, args=(3600,),
                                            name="late-poller", daemon=True))
            started[0].start()
    os.register_at_fork(after_in_parent=start_once)


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
