"""Fork-safety checks: what a spawner is about to share with every worker it forks.

Run in the preloader (after `on_preload`) and in a template (after `pre_template_fork`),
just before the first fork. Threads do not survive fork; a socket connected to a peer
(a database, a cache) would be shared by every worker, whose replies then interleave;
a pipe likewise. Regular files (logs) are harmless when shared: debug only.
"""
import os
import socket
import threading

import psutil


class ForkUnsafe(Exception):
    """fork_safety = 'strict' and something unsafe would be shared."""


def inspect_process(known_fds):
    """(warnings, notes): what is unsafe to fork, and what is merely shared."""
    warnings, notes = [], []
    others = psutil.Process().num_threads() - 1
    if others > 0:
        names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        warnings.append("%d other thread(s) running%s: threads do not survive fork"
                        % (others, " (%s)" % ", ".join(names) if names else ""))
    for fd in open_fds():
        if fd in known_fds:
            continue
        try:
            target = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            continue  # closed meanwhile (the fd of the listing itself)
        if target.startswith("socket:"):
            peer = connected_peer(fd)
            if peer:
                warnings.append("fd %d is a socket connected to %s" % (fd, peer))
        elif target.startswith("pipe:"):
            warnings.append("fd %d is a pipe (%s)" % (fd, target))
        elif fd > 2:
            notes.append("fd %d is %s" % (fd, target))
    return warnings, notes


def open_fds():
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def connected_peer(fd):
    """A description of the peer of socket `fd`, or None (listening, unconnected)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return None
            peer = sock.getpeername()
        except OSError:
            return None  # not connected
        if sock.family == socket.AF_UNIX:
            return "unix:%s" % (peer or "<anonymous socketpair>")
        kind = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
        return "%s:%s:%s" % (kind, peer[0], peer[1])


def check(cfg, log, role, hook, known_fds):
    """Apply `fork_safety` before `role` forks; raises ForkUnsafe when strict."""
    if cfg.fork_safety == "off":
        return
    warnings, notes = inspect_process(known_fds)
    for note in notes:
        log.debug("fork safety (%s): %s, shared with every worker", role, note)
    for warning in warnings:
        log.warning("fork safety (%s): %s; it would be shared with every worker forked "
                    "from the %s: close it in the %s hook", role, warning, role, hook)
    if warnings and cfg.fork_safety == "strict":
        raise ForkUnsafe("fork_safety = 'strict': the %s refuses to fork: %s"
                         % (role, "; ".join(warnings)))
