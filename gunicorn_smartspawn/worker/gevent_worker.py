"""``-k smartspawn.GeventWorker``: gunicorn's gevent worker with smart spawning.

The preloader monkey-patches (gevent's ``patch_all``) before it imports the app, so the
app and the libraries it imports see gevent's socket, ssl, threading and time from the
start, as under plain ``-k gevent`` where the worker patches before it loads the app.
Every process forked from a patched one is made right by gevent's own fork (the patched
``os.fork`` reinitialises the hub in the child), and each worker reinitialises it again,
as gunicorn's gevent worker does.

Out-of-band work: requests run concurrently on the hub, so they pass an oob.RequestGate.
A collection blocks the hub, which accepts nothing meanwhile; on_oob_work runs in a
greenlet, and may do I/O.
"""
import gevent
from gevent import event
from gunicorn.workers import ggevent

from gunicorn_smartspawn.worker.oob import RequestGate
from gunicorn_smartspawn.worker.base import SmartWorkerMixin, close_kept_alive_connections


class GeventWorker(SmartWorkerMixin, ggevent.GeventWorker):
    """gunicorn's gevent worker (``-k gevent``)."""

    gate = None
    can_disable = True
    servers = ()   # gevent's StreamServers, one per listener, once run() made them

    def note_server(self, server):
        """gunicorn's run() started `server` (host/patches.py: note_gevent_servers)."""
        self.servers = [*self.servers, server]
        if self.disabled:
            server.stop_accepting()

    def handle_command(self, sig, frame):
        # On the hub, in a greenlet: on_oob_work may do I/O.
        gevent.get_hub().loop.run_callback_threadsafe(gevent.spawn, self.read_orders)

    def accepting_changed(self):
        self.set_accepting(True)
        close_kept_alive_connections(self)

    def set_accepting(self, on):
        """Accept, unless disabled (or `on` is False: out-of-band work holds requests)."""
        for server in self.servers:
            if on and not self.disabled:
                server.start_accepting()
            else:
                server.stop_accepting()

    @classmethod
    def before_app_import(cls):
        from gevent import monkey
        monkey.patch_all()
        # The hub's event loop now, before the app is imported and anything forks: the
        # main thread's loop is then gevent's default loop, the one libev reaps children
        # on for the app's child watchers (gevent.subprocess, gevent's os.waitpid). The
        # spawner's own fork and wait do without them (spawner/base.py).
        gevent.get_hub()

    def leave_serving(self):
        super().leave_serving()
        # gevent's os.close() closes a pipe or socket at the hub's next turn: let it come,
        # or the template's children would inherit what the worker closed.
        gevent.idle()

    def wrap_app(self):
        super().wrap_app()
        if self.oob is not None:
            # The work in a greenlet of its own: on_oob_work may do I/O, which gevent
            # forbids in a callback of the hub.
            self.gate = RequestGate(self.oob, event.Event, gevent.spawn_later,
                                    accepting=self.set_accepting)

    def handle_usr1(self, sig, frame):
        # gunicorn's reopens the log files in a greenlet; faulthandler must be given the
        # new file after that: greenlets start in the order they were spawned.
        ggevent.GeventWorker.handle_usr1(self, sig, frame)
        gevent.spawn(self.deadlines.take_dump_signal)

    def handle_request(self, listener_name, req, sock, addr):
        gate = self.gate
        if gate is None:
            return super().handle_request(listener_name, req, sock, addr)
        while (held := gate.held()) is not None:
            held.wait()
        gate.entered()
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            gate.left()
