"""A tiny WSGI app for trying smartspawn: `gunicorn -k smartspawn.Worker examples.hello:app`."""
import os


def app(environ, start_response):
    body = ("hello from worker pid %d\n" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
