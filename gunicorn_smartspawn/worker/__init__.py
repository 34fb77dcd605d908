"""Code that runs in the workers: the worker classes (base: sync and gthread; asgi,
asgi_uvicorn, gevent_worker: the event-loop ones), out-of-band work (oob) and the
application's fork gates (forkgate).
"""
