"""The ASGI workers: ``-k smartspawn.ASGIWorker`` (gunicorn's own asgi worker) and
``-k smartspawn.UvicornWorker`` (uvicorn-worker's, with ``gunicorn_smartspawn[uvicorn]``).

The event loop belongs to the worker, never to a spawner. The preloader imports the app
and forks with no loop. Each worker makes its own loop and runs the ASGI lifespan startup
on it. A refork candidate leaves its loop as a stopping worker does: in-flight requests
and open websockets finish (within ``graceful_timeout``), the lifespan shutdown runs, the
loop is closed. Only then does it become the template. So what the app builds in its
lifespan (pools, clients, locks, queues) is built again in every worker, on the loop that
runs it, instead of being inherited bound to a loop that is gone.

Out-of-band GC and work (oob.py) run between requests on the loop itself: while one runs
the loop does nothing else, so the worker accepts nothing. When one is due and requests
are in flight, new requests wait (``ServedRequests``) until those are done.
"""
import asyncio
import signal

from gunicorn.workers import gasgi

from gunicorn_smartspawn import forksafety
from gunicorn_smartspawn.worker.oob import RequestGate
from gunicorn_smartspawn.worker.base import SmartWorkerMixin


# What a template had open when it stopped serving (fd targets), inherited by the workers
# it forks: a pipe one of them has that the template had not was made at fork, by an
# atfork handler (libuv remakes its signal pipe so), before the worker's loop existed.
_TEMPLATE_FDS: frozenset = frozenset()


class EventLoopWorkerMixin(SmartWorkerMixin):
    """What smartspawn adds to a worker whose requests run on an asyncio loop."""

    app_attribute = "asgi"   # where the base class keeps the app it loaded

    # `nr` counts the HTTP requests that ended in ServedRequests, which also tells the
    # master's counters and max_requests (lifecycle.py), as handle_request does in sync.
    # gunicorn's asgi protocol adds one to it after each response, for the same requests:
    # those writes are ignored, or out-of-band work (oob_gc = N) would see each request
    # late, and the master twice.
    _nr = 0

    @property
    def nr(self):
        return self._nr

    @nr.setter
    def nr(self, value):
        pass

    def request_ended(self):
        self._nr += 1
        super().request_ended()

    command_loop = None  # the worker's loop, where the master's orders are read

    def handle_command(self, sig, frame):
        if self.command_loop is not None:
            self.command_loop.call_soon_threadsafe(self.read_orders)

    def wrap_app(self):
        setattr(self, self.app_attribute,
                ServedRequests(self, getattr(self, self.app_attribute)))

    # {fd: what it was}: what appeared with the loop, or was remade at fork (note_loop_fds).
    fds_with_the_loop: dict = {}

    def loop_library_fds(self):
        # Those still open and still the same: the loop's own (selector, self-pipe) are
        # closed with it, and a number can have been reused since.
        return {fd for fd, target in self.fds_with_the_loop.items()
                if forksafety.fd_target(fd) == target}

    def init_process(self):
        # Before gunicorn's init opens anything (its PIPE): what is open now came with
        # the fork, or was made at fork.
        self.fds_before_the_loop = set(forksafety.open_fds())
        self.made_at_fork = {fd: target for fd in self.fds_before_the_loop
                             if (target := forksafety.fd_target(fd) or "").startswith("pipe:")
                             and _TEMPLATE_FDS and target not in _TEMPLATE_FDS}
        super().init_process()

    def note_loop_fds(self):
        """Once the loop exists (with its signal handling): what appeared with it."""
        targets = {fd: forksafety.fd_target(fd)
                   for fd in set(forksafety.open_fds()) - self.fds_before_the_loop}
        self.fds_with_the_loop = {fd: target for fd, target in targets.items() if target}
        self.fds_with_the_loop.update(self.made_at_fork)

    def leave_serving(self):
        global _TEMPLATE_FDS
        super().leave_serving()
        _TEMPLATE_FDS = frozenset(filter(None, map(forksafety.fd_target,
                                                   forksafety.open_fds())))

    async def keep_beating(self):
        """While the worker drains: a refork candidate is still a worker to the master,
        whose `timeout` would kill it mid-drain."""
        while True:
            self.notify()
            await asyncio.sleep(1.0)


class ASGIWorker(EventLoopWorkerMixin, gasgi.ASGIWorker):
    """gunicorn's asgi worker (``-k asgi``)."""

    def init_signals(self):
        super().init_signals()
        self.command_loop = self.loop
        if self.channel is not None:
            # Through the loop, like the base class's own handlers: it wakes the loop.
            self.loop.add_signal_handler(signal.SIGURG, self.handle_urg_signal)
        # The loop exists, and its signal handling (uvloop makes libuv's pipe there).
        self.note_loop_fds()

    def handle_urg_signal(self):
        if not self.alive:
            return  # already stopping (TERM): it becomes nothing
        self.alive = False  # as TERM: in-flight requests and websockets finish
        self.template_requested = True

    def handle_usr1_signal(self):
        super().handle_usr1_signal()  # reopens the log files
        self.deadlines.take_dump_signal()

    def handle_exit_signal(self):
        self.template_requested = False  # TERM wins: a stopping worker becomes nothing
        super().handle_exit_signal()

    def handle_quit_signal(self):
        self.template_requested = False
        super().handle_quit_signal()

    async def _shutdown(self):
        beating = self.loop.create_task(self.keep_beating())
        try:
            await super()._shutdown()
        finally:
            beating.cancel()


class ServedRequests:
    """The ASGI app as an event-loop worker runs it.

    Counts the HTTP requests that end (worker.request_ended), removes the out-of-band
    work header from responses, and passes every HTTP request through the out-of-band
    gate (oob.RequestGate). A websocket or the lifespan never does: it lasts
    as long as the client or the worker wants.
    """

    def __init__(self, worker, app):
        self.worker = worker
        self.app = app
        oob = worker.oob
        self.oob = oob
        self.header = oob.header.encode("latin-1") if oob and oob.header else b""
        self.gate = None
        if oob is not None:
            self.gate = RequestGate(oob, asyncio.Event,
                                    lambda seconds, run:
                                    asyncio.get_running_loop().call_later(seconds, run))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gate = self.gate
        if gate is not None:
            while (held := gate.held()) is not None:
                await held.wait()
            gate.entered()
        self.worker.request_began()
        try:
            return await self.app(scope, receive, self.sender(send) if self.header else send)
        finally:
            try:
                self.worker.request_ended()
            finally:
                if gate is not None:
                    gate.left()

    def sender(self, send):
        header = self.header

        async def send_without_header(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers") or ()
                if any(name.lower() == header for name, _ in headers):
                    message = {**message, "headers": self.oob.take_header(headers)}
            await send(message)
        return send_without_header
