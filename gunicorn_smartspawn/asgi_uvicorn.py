"""``-k smartspawn.UvicornWorker``: uvicorn-worker's UvicornWorker with smart spawning.

Needs the ``uvicorn`` extra: ``pip install "gunicorn_smartspawn[uvicorn]"``. What it shares
with gunicorn's asgi worker (the loop is the worker's, the lifespan runs in each worker,
out-of-band work on the loop) is in asgi.py.
"""
try:
    from uvicorn.server import Server
    from uvicorn_worker import UvicornWorker as BaseUvicornWorker
except ImportError as exc:
    raise ImportError('smartspawn.UvicornWorker needs uvicorn-worker: pip install '
                      '"gunicorn_smartspawn[uvicorn]" (%s)' % exc) from exc

from gunicorn_smartspawn.asgi import EventLoopWorkerMixin
from gunicorn_smartspawn.worker import boot_error_code


class UvicornWorker(EventLoopWorkerMixin, BaseUvicornWorker):
    """uvicorn-worker's worker; uvicorn runs the loop, the lifespan and the shutdown."""

    app_attribute = "wsgi"   # uvicorn-worker keeps the ASGI app there
    counts_requests = True   # uvicorn counts them for its own limit, not in `nr`
    uvicorn = None           # the uvicorn Server, while it serves

    def load_wsgi(self):
        # Past max_requests the master replaces this worker before it stops
        # (lifecycle.py): uvicorn must not stop it by itself.
        self.config.limit_max_requests = None
        super().load_wsgi()

    async def _serve(self):
        # uvicorn-worker's own, keeping the Server: URG and a retirement stop it.
        self.config.app = self.wsgi
        self.uvicorn = Server(config=self.config)
        self._install_sigquit_handler()
        await self.uvicorn.serve(sockets=self.sockets)
        if not self.uvicorn.started:
            raise SystemExit(boot_error_code(self))

    def handle_urg(self, sig, frame):
        self.template_requested = True
        self.stop_serving()

    def stop_serving(self):
        super().stop_serving()
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True  # uvicorn finishes requests, runs lifespan shutdown
