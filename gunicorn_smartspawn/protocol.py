"""Messages between the master, the spawners (preloader, template) and workers.

Wire format: a SOCK_SEQPACKET socketpair, one datagram per message, each a JSON object
``{"type": <class name>, <field>: <value>, ...}``. A file descriptor (a worker's heartbeat
file) travels alongside as SCM_RIGHTS ancillary data. SEQPACKET keeps message
boundaries and makes each send atomic, so a grandchild may write on the preloader's end
while the preloader itself waits for the next request. An empty read is EOF: the peer
(and every process holding its end) has gone.
"""
import dataclasses
import json
import socket

MAX_MESSAGE = 4096
MAX_FDS = 3  # SpawnWorker to a standby: heartbeat, worker channel, master channel


@dataclasses.dataclass(frozen=True)
class SpawnWorker:
    """master -> spawner: fork worker `age` using counter `slot` (None: no slot free).

    fds: its heartbeat file, then (with fork_worker) its own channel to the master.
    """
    age: int
    slot: int | None


@dataclasses.dataclass(frozen=True)
class SpawnerReady:
    """spawner -> master: the app is loaded and frozen; spawn requests are welcome."""
    pid: int
    boot_seconds: float


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


MESSAGES = {cls.__name__: cls for cls in (SpawnWorker, SpawnerReady, BecomeTemplate,
                                          BootFailed, StandbyReady, WorkerSpawned,
                                          SpawnFailed)}


def channel_pair():
    """(master end, child end); neither survives exec (PEP 446)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock, message, fds=()):
    payload = json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)})
    socket.send_fds(sock, [payload.encode()], list(fds))


def recv(sock):
    """One message and the fds that came with it; raises EOFError when the peer is gone."""
    data, fds, flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            socket.close(fd)
        if data:
            raise OSError("message or file descriptors truncated: a protocol bug")
        raise EOFError("channel closed")
    fields = json.loads(data)
    return MESSAGES[fields.pop("type")](**fields), fds
