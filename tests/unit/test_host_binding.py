"""What the master asks of gunicorn around a spawn (patches.py), with no process: binding a
reuse_port worker's sockets once, and the control socket's thread around a fork."""
import errno
import inspect
import os
import socket
import threading
import time
import types

import pytest
from gunicorn import sock
from gunicorn.arbiter import Arbiter

from fakes import LOG
from gunicorn_smartspawn.host import patches


def reuse_port_config(*ports, backlog=64):
    return types.SimpleNamespace(
        address=[("127.0.0.1", port) for port in ports], reuse_port=True, backlog=backlog,
        is_ssl=False, umask=0, uid=os.geteuid(), gid=os.getegid(), ssl_options={})


def test_binding_a_seat_fails_at_once_and_leaves_no_socket_open():
    """gunicorn's create_sockets retries for 5 s, then sys.exit(1); a seat fails at once
    with the OSError, and the sockets bound before it are closed."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        fds_before = len(os.listdir("/proc/self/fd"))
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            patches.bind_once(reuse_port_config(free, taken), LOG)
        assert caught.value.errno == errno.EADDRINUSE
        assert time.monotonic() - started < 1.0
        # The socket that failed is closed with the exception (gunicorn's socket class
        # leaves it to its frame), as in the master once the failure is logged.
        del caught
        assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_seat_is_bound_with_reuse_port_and_the_backlog():
    listeners = patches.bind_once(reuse_port_config(0, backlog=17), LOG)
    try:
        assert len(listeners) == 1
        assert listeners[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        for listener in listeners:
            listener.close()


class ControlServer:
    """gunicorn's ControlSocketServer, as far as control_thread_stopped uses it."""

    def __init__(self):
        self._running = True
        self._was_running_before_fork = False
        self._ready = threading.Event()  # 26.1 and later: _stop_for_fork waits for it
        self.calls = []

    def _stop_for_fork(self):
        self.calls.append("stop")
        self._was_running_before_fork, self._running = True, False

    def _restart_after_fork(self):
        if self._was_running_before_fork:
            self.calls.append("restart")
            self._was_running_before_fork, self._running = False, True


def test_the_control_thread_is_stopped_for_the_block_and_restarted_after():
    server = ControlServer()
    arbiter = types.SimpleNamespace(_control_server=server, pid=os.getpid())
    with patches.control_thread_stopped(arbiter):
        assert server.calls == ["stop"] and not server._running
        # gunicorn's at-fork handlers, around the fork in the block: they find it stopped
        server._was_running_before_fork = False
        server._restart_after_fork()
        assert not server._running
    assert server.calls == ["stop", "restart"] and server._running


def test_nothing_is_restarted_in_a_forked_child_or_when_it_was_not_running():
    server = ControlServer()
    child = types.SimpleNamespace(_control_server=server, pid=os.getpid() + 1)
    with patches.control_thread_stopped(child):
        pass
    assert server.calls == ["stop"]
    server = ControlServer()
    server._running = False
    with patches.control_thread_stopped(types.SimpleNamespace(_control_server=server,
                                                              pid=os.getpid())):
        pass
    assert server.calls == []
    with patches.control_thread_stopped(types.SimpleNamespace(pid=os.getpid())):
        pass  # --no-control-socket


class StartingControlServer(ControlServer):
    """gunicorn 25.2 to 26.0's, just restarted: its thread serves a moment later."""

    def __init__(self):
        super().__init__()
        del self._ready
        self._server = None
        self._thread = threading.Thread(target=self.serve)
        self._thread.start()

    def serve(self):
        time.sleep(0.2)
        self._server = "serving"
        time.sleep(0.5)  # serve_forever()

    def _stop_for_fork(self):
        self.calls.append("stop while serving" if self._server else "stop while starting")
        self._was_running_before_fork, self._running = True, False


def test_a_control_thread_still_starting_is_stopped_once_it_serves():
    server = StartingControlServer()
    with patches.control_thread_stopped(types.SimpleNamespace(_control_server=server,
                                                              pid=os.getpid())):
        assert server.calls == ["stop while serving"]
    server._thread.join()


class ControlServer251:
    """gunicorn 25.1's, which nothing stops at a fork: its own forks leave it running."""
    _running = True


def test_a_control_thread_gunicorn_cannot_stop_for_a_fork_is_left_running():
    server = ControlServer251()
    with patches.control_thread_stopped(types.SimpleNamespace(_control_server=server,
                                                              pid=os.getpid())):
        assert server._running


@pytest.mark.skipif(not (patches.CONTROL_SOCKET and hasattr(
    patches.ctl_server.ControlSocketServer, "_stop_for_fork")),
    reason="gunicorn < 25.2: nothing stops the control thread at a fork")
def test_what_control_thread_stopped_relies_on_in_gunicorn():
    """Fails loudly when gunicorn moves what control_thread_stopped uses."""
    assert "self._control_server = " in inspect.getsource(Arbiter)
    control = inspect.getsource(patches.ctl_server.ControlSocketServer)
    for needle in ("def _stop_for_fork(self)", "def _restart_after_fork(self)",
                   "if not self._was_running_before_fork:", "self._running = True"):
        assert needle in control, needle


def test_what_bind_once_relies_on_in_gunicorn():
    """Fails loudly when gunicorn moves what bind_once uses."""
    assert inspect.signature(sock._sock_type).parameters.keys() == {"addr"}
    assert sock._sock_type(("127.0.0.1", 80)) is sock.TCPSocket
