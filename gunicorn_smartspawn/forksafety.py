"""Fork-safety checks: what a spawner is about to share with every worker it forks.

Run in the preloader (after `on_preload`) and in a template (after `pre_template_fork`),
just before the first fork. Threads do not survive fork, and a lock one of them holds
stays locked in every worker; a socket connected to a peer (a database, a cache) would be
shared by every worker, whose replies then interleave; a pipe likewise. Regular files
(logs) are harmless when shared: debug only.

Every later fork goes through `fork()`: from Python 3.12, `os.fork()` in a process with
other threads emits a DeprecationWarning that names no thread; we say which ones, once
for each new set, and the strict mode refuses.
"""
import os
import socket
import threading
import warnings

import psutil


class ForkUnsafe(Exception):
    """fork_safety = 'strict' and something unsafe would be shared."""


# The threads last reported (by the check or by fork()): reported again only when they change.
_reported_threads: list[str] = []

# Python's own warning (3.12+) at a fork with threads: we report those threads ourselves.
# Ignored only when raised by this module's os.fork() (a filter for the process's life,
# set once: warnings.catch_warnings() around the fork would swap the filters under the
# threads running), so the application's own forks still get it.
warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
                        r"fork\(\) may", DeprecationWarning, module=__name__.replace(".", r"\."))


def other_threads():
    """Names of this process's threads but the calling one: a Python thread by its name,
    a thread started by C code (a library's pool) by the kernel's name for it."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    me = threading.get_native_id()
    names = []
    for thread in psutil.Process().threads():
        if thread.id == me:
            continue
        if thread.id in python_names:
            names.append(repr(python_names[thread.id]))
        else:
            names.append("native %r (tid %d)" % (native_thread_name(thread.id), thread.id))
    return sorted(names)


def native_thread_name(tid):
    try:
        with open("/proc/self/task/%d/comm" % tid) as comm:
            return comm.read().strip()
    except OSError:
        return "?"  # exited meanwhile


def threads_warning(names, hook):
    return ("%d other thread(s) running (%s): a thread does not survive fork, and a lock it "
            "holds stays locked in every worker; stop it in the %s hook (and start one per "
            "worker in post_fork)" % (len(names), ", ".join(names), hook))


def inspect_process(known_fds, hook):
    """(unsafe, notes): what is unsafe to fork, and what is merely shared."""
    unsafe, notes = [], []
    threads = other_threads()
    if threads:
        unsafe.append(threads_warning(threads, hook))
    _reported_threads[:] = threads
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
                unsafe.append(shared_warning("fd %d is a socket connected to %s"
                                               % (fd, peer), hook))
        elif target.startswith("pipe:"):
            unsafe.append(shared_warning("fd %d is a pipe (%s)" % (fd, target), hook))
        elif fd > 2:
            notes.append("fd %d is %s" % (fd, target))
    return unsafe, notes


def shared_warning(what, hook):
    return "%s; it would be shared with every worker: close it in the %s hook" % (what, hook)


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
    unsafe, notes = inspect_process(known_fds, hook)
    for note in notes:
        log.debug("fork safety (%s): %s, shared with every worker", role, note)
    for warning in unsafe:
        log.warning("fork safety (%s): %s", role, warning)
    if unsafe and cfg.fork_safety == "strict":
        raise refusal(role, "; ".join(unsafe))


def refusal(role, what):
    return ForkUnsafe("fork_safety = 'strict': the %s refuses to fork: %s" % (role, what))


def fork(cfg, log, role, hook):
    """os.fork() for a spawner: threads started since the check are reported (strict:
    ForkUnsafe, no fork), in place of Python's nameless DeprecationWarning."""
    if cfg.fork_safety != "off":
        check_threads(cfg, log, role, hook)
    return os.fork()


def check_threads(cfg, log, role, hook):
    threads = other_threads()
    if threads and threads != _reported_threads:
        warning = threads_warning(threads, hook)
        if cfg.fork_safety == "strict":
            raise refusal(role, warning)
        log.warning("fork safety (%s): %s", role, warning)
    _reported_threads[:] = threads
