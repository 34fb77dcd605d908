"""Test app that, at import, connects to PEER_PORT on loopback and/or starts a thread."""
import os
import socket
import threading
import time

CONNECTION = None
if os.environ.get("PEER_PORT"):
    CONNECTION = socket.create_connection(("127.0.0.1", int(os.environ["PEER_PORT"])))

if os.environ.get("START_THREAD"):
    threading.Thread(target=time.sleep, args=(3600,), name="cache-refresher",
                     daemon=True).start()


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
