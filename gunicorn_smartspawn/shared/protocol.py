"""Messages between the master, the spawners (preloader, template) and workers.

Wire format: a SOCK_SEQPACKET socketpair, one datagram per message, each a JSON object
``{"type": <class name>, <field>: <value>, ...}``. A file descriptor (a worker's heartbeat
file) travels alongside as SCM_RIGHTS ancillary data. SEQPACKET keeps message
boundaries and makes each send atomic, so a grandchild may write on the preloader's end
while the preloader itself waits for the next request. An empty read is EOF: the peer
(and every process holding its end) has gone.

A message is at most MAX_MESSAGE bytes (UTF-8 JSON, non-ASCII unescaped); the texts in it
are cut to MAX_TEXT characters by the sender (the whole traceback stays in the log). A
datagram that is truncated, undecodable, of an unknown type or with the wrong fields
raises ProtocolError: its sender is broken.
"""
import dataclasses
import json
import os
import re
import _socket
import socket

MAX_MESSAGE = 64 * 1024
MAX_TEXT = 4000  # characters: at most 16 000 bytes of UTF-8
# SpawnWorker to a standby: heartbeat, hook state, worker channel, master channel, and with
# reuse_port the worker's own listening sockets.
MAX_FDS = 64


class ProtocolError(Exception):
    """A message that no healthy peer sends."""


# What brief() appends: a text received already cut is not cut again.
CUT = " [... %d more characters, see the log]"
CUT_PATTERN = re.compile(re.escape(CUT).replace("%d", r"\d+") + r"\Z")


def brief(text):
    """`text` cut to MAX_TEXT characters, saying so."""
    if len(text) <= MAX_TEXT or (CUT_PATTERN.search(text)
                                 and len(CUT_PATTERN.split(text)[0]) == MAX_TEXT):
        return text
    return text[:MAX_TEXT] + CUT % (len(text) - MAX_TEXT)


@dataclasses.dataclass(frozen=True)
class SpawnWorker:
    """master -> spawner: fork worker `age` using counter `slot` (None: no slot free).

    fds: its heartbeat file, then (with `hook_state`) what pre_fork left for it
    (hookstate.py), then (with fork_worker) its own channel to the master, then (with
    reuse_port) its `listeners` listening sockets, bound by the master.
    """
    age: int
    slot: int | None
    listeners: int = 0
    hook_state: bool = False


@dataclasses.dataclass(frozen=True)
class SpawnerReady:
    """spawner -> master: the app is loaded and frozen; spawn requests are welcome."""
    pid: int
    boot_seconds: float
    immortal_objects: int | None = None    # gc_freeze = "immortal": what the pass made so,
    immortal_walked: int | None = None     # the objects it went through,
    immortal_seconds: float | None = None  # and its time


@dataclasses.dataclass(frozen=True)
class BecomeTemplate:
    """master -> worker, with SIGURG: stop serving and become the template of `generation`."""
    generation: int


@dataclasses.dataclass(frozen=True)
class BootFailed:
    """preloader or template -> master, just before it exits: it could not load the app,
    or will not become the template (fork safety, fork gates)."""
    exit_code: int
    reason: str

    def __post_init__(self):
        object.__setattr__(self, "reason", brief(self.reason))


@dataclasses.dataclass(frozen=True)
class StandbyReady:
    """standby -> master: process `pid` is forked ahead of need (for status and metrics)."""
    pid: int


@dataclasses.dataclass(frozen=True)
class WorkerSpawned:
    """new worker -> master, as its first act: worker `age` is process `pid`."""
    age: int
    pid: int


@dataclasses.dataclass(frozen=True)
class SpawnFailed:
    """preloader -> master: worker `age` could not be forked."""
    age: int
    reason: str

    def __post_init__(self):
        object.__setattr__(self, "reason", brief(self.reason))


MESSAGES = {cls.__name__: cls for cls in (SpawnWorker, SpawnerReady, BecomeTemplate,
                                          BootFailed, StandbyReady, WorkerSpawned,
                                          SpawnFailed)}


def channel_pair():
    """(master end, child end); neither survives exec (PEP 446)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def shared_socket(fd):
    """A socket object for `fd`, a copy of another process's socket, that leaves its
    blocking mode alone: gevent's patched socket.socket makes what it wraps non-blocking,
    and O_NONBLOCK belongs to the open file, shared with the other process (a spawner's
    channel, whose blocking recv() would then fail)."""
    return _socket.socket(fileno=fd)


def send(sock, message, fds=()):
    payload = json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)},
                         ensure_ascii=False).encode()
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError("%s of %d bytes: larger than %d" % (
            type(message).__name__, len(payload), MAX_MESSAGE))
    socket.send_fds(sock, [payload], list(fds))


def recv(sock):
    """One message and the fds that came with it.

    Raises EOFError when the peer is gone, ProtocolError when what came is no message.
    """
    data, fds, flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    try:
        # Received fds must not pass into programs the app runs (PEP 446). Set here:
        # CPython 3.11's recv_fds() drops its flags argument (MSG_CMSG_CLOEXEC).
        for fd in fds:
            os.set_inheritable(fd, False)
        if not data and not fds:
            raise EOFError("channel closed")
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise ProtocolError("message or file descriptors truncated")
        return decode(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def decode(data):
    try:
        fields = json.loads(data.decode())
        message = MESSAGES[fields.pop("type")](**fields)
    # RecursionError: JSON nested deeper than the interpreter's stack (a 64 KiB datagram
    # holds 65,536 '[').
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as exc:
        raise ProtocolError("undecodable message %r: %s: %s" % (
            data[:200], type(exc).__name__, exc)) from None
    for field in dataclasses.fields(message):
        value, expected = getattr(message, field.name), field.type
        if expected is float:
            expected = (int, float)  # JSON writes 2.0 as 2
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ProtocolError("%s.%s=%r: not a %s" % (
                type(message).__name__, field.name, value, field.type))
    return message
