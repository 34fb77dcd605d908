"""Test app: its own metric in prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR): each worker sets a live gauge to 1 once it serves
(post_worker_init calls started())."""
import os

from prometheus_client import Gauge

UP = Gauge("app_worker_up", "1 in each worker of the app", multiprocess_mode="livesum")


def started():
    UP.set(1)


def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
