"""``-k smartspawn.UvicornWorker`` and ``-k smartspawn.UvicornH11Worker``: uvicorn-worker's
two classes with smart spawning.

Needs the ``uvicorn`` extra: ``pip install "gunicorn_smartspawn[uvicorn]"``. What it shares
with gunicorn's asgi worker (the loop is the worker's, the lifespan runs in each worker,
out-of-band work on the loop) is in asgi.py.
"""
import asyncio

try:
    from uvicorn.config import HTTP_PROTOCOLS, LIFESPAN, LOOP_FACTORIES, WS_PROTOCOLS
    from uvicorn.importer import import_from_string
    from uvicorn._compat import asyncio_run
    from uvicorn.server import Server
    from uvicorn_worker import UvicornH11Worker as BaseUvicornH11Worker
    from uvicorn_worker import UvicornWorker as BaseUvicornWorker
except ImportError as exc:
    raise ImportError('smartspawn.UvicornWorker needs uvicorn-worker: pip install '
                      '"gunicorn_smartspawn[uvicorn]" (%s)' % exc) from exc

from gunicorn_smartspawn.worker.asgi import EventLoopWorkerMixin, ServedRequests
from gunicorn_smartspawn.worker.base import boot_error_code


# Seconds a stopping uvicorn worker gives a connection it has just accepted to send its
# request (loopback: microseconds) before uvicorn closes those that have sent none.
JUST_ACCEPTED_GRACE = 0.05


class DrainingServer(Server):
    """uvicorn's Server, which keeps the worker's heartbeat going while it shuts down, and
    resets no client that had just connected."""

    def __init__(self, config, worker):
        super().__init__(config)
        self.worker = worker

    async def shutdown(self, sockets=None):
        beating = asyncio.get_running_loop().create_task(self.worker.keep_beating())
        try:
            # uvicorn's shutdown closes every connection with no request in progress,
            # one accepted in the same turn of the loop included: its client, whose
            # request is on the way, sees a reset (plain uvicorn-worker's do too, at
            # every max_requests). Stop accepting first and let those requests in.
            for server in self.servers:
                server.close()
            await asyncio.sleep(JUST_ACCEPTED_GRACE)
            await super().shutdown(sockets)
        finally:
            beating.cancel()


class LoopNotingWorker(BaseUvicornWorker):
    """uvicorn-worker's run(), noting what the loop library opens with the loop. Below
    the smartspawn mixin, whose run() makes a template of the worker afterwards."""

    def run(self):
        make_loop = self.config.get_loop_factory() or asyncio.new_event_loop

        def loop_factory():
            loop = self.command_loop = make_loop()
            self.note_loop_fds()
            return loop
        return asyncio_run(self._serve(), loop_factory=loop_factory)


class UvicornWorker(EventLoopWorkerMixin, LoopNotingWorker):
    """uvicorn-worker's worker; uvicorn runs the loop, the lifespan and the shutdown."""

    uvicorn = None           # the uvicorn Server, while it serves

    @classmethod
    def before_app_import(cls):
        # What uvicorn's Config.load() imports in each worker (h11 or httptools,
        # websockets, its loop and lifespan): imported here once, shared by every worker,
        # and a new worker's first response does not wait for it.
        for choice in (HTTP_PROTOCOLS[cls.CONFIG_KWARGS["http"]], WS_PROTOCOLS["auto"],
                       LIFESPAN["auto"], LOOP_FACTORIES[cls.CONFIG_KWARGS["loop"]]):
            if choice:
                import_from_string(choice)

    def load_wsgi(self):
        # Past max_requests the master replaces this worker before it stops
        # (lifecycle.py): uvicorn must not stop it by itself.
        self.config.limit_max_requests = None
        super().load_wsgi()

    def wrap_app(self):
        pass  # around the app uvicorn loads (an ASGI2 app becomes ASGI3 there): in _serve

    async def _serve(self):
        # uvicorn-worker's own, keeping the Server (URG and a retirement stop it) and
        # wrapping the app as uvicorn runs it.
        self.config.app = self.wsgi
        self.config.load()
        self.config.loaded_app = ServedRequests(self, self.config.loaded_app)
        self.uvicorn = DrainingServer(self.config, self)
        self._install_sigquit_handler()
        await self.uvicorn.serve(sockets=self.sockets)
        if not self.uvicorn.started:
            raise SystemExit(boot_error_code(self))

    def handle_urg(self, sig, frame):
        if not self.alive or (self.uvicorn is not None and self.uvicorn.should_exit):
            return  # already stopping (TERM): it becomes nothing
        self.template_requested = True
        self.stop_serving()

    def stop_serving(self):
        super().stop_serving()
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True  # uvicorn finishes requests, runs lifespan shutdown


class UvicornH11Worker(UvicornWorker):
    """uvicorn-worker's pure-Python one: the h11 parser and asyncio's own loop."""

    CONFIG_KWARGS = BaseUvicornH11Worker.CONFIG_KWARGS
