"""Fork-safety checks: what a spawner is about to share with every worker it forks.

Run in the preloader (after `on_preload`) and in a template (after `pre_template_fork`),
just before the first fork. What it looks for, and how it tells what is the app's:

- threads: they do not survive fork, and a lock one holds stays locked in every worker;
  but some libraries start theirs again in the child (OpenTelemetry, Sentry, the native
  pools of OpenBLAS and OpenMP): those are noted, not blamed (libraries.py knows them);
- objects unsafe to share, by type: an open sqlite3 connection, a DB-API connection, an
  SQLAlchemy pool holding connections, a grpc channel, an asyncio loop (libraries.py);
- fds: a socket connected to a peer (every worker would share the connection), a pipe,
  or a regular file open for reading, that the app opened: a file's offset is shared too,
  so a seek() and read() in one worker returns what another positioned. What the
  preloader had before it imported the app is not the app's: the listeners, gunicorn's
  own (its log files), and whatever the master inherited from what started it (plain
  gunicorn hands those to its workers too): noted once per master, at debug (not again
  by the preloader of a HUP). A file only written to (a log the app opened) is harmless
  when shared: debug only.

A finding is logged once: not again by a later check in the same process, nor by a
template forked from a spawner that said it (the record is inherited by fork).

Every later fork goes through `fork()`: from Python 3.12, `os.fork()` in a process with
other threads emits a DeprecationWarning that names no thread; we say which ones, once
for each new set, and the strict mode refuses.
"""
import collections
import fcntl
import gc
import logging
import os
import socket
import stat
import sys
import threading
import warnings
from dataclasses import dataclass

import psutil

from gunicorn_smartspawn.forksafety import libraries


class ForkUnsafe(Exception):
    """fork_safety = 'strict' and something unsafe would be shared."""


@dataclass(frozen=True)
class Finding:
    level: str  # "unsafe" (a warning; strict refuses), "info" or "debug"
    text: str
    key: str  # what it is about, without the advice (which names the hook)


LOG_LEVELS = {"unsafe": "warning", "info": "info", "debug": "debug"}

# The keys of what this process has reported, or the spawner it was forked from: a
# template does not repeat the notes (info, debug) of the preloader on what it inherited,
# nor on the threads a library starts again in every child. What is unsafe is said again
# in each spawner: its threads are new ones (threads do not survive fork), and an object
# at the address of one reported may be another.
_reported: set[str] = set()
_reported_unsafe: set[str] = set()
os.register_at_fork(after_in_child=_reported_unsafe.clear)
# The preloader's fds before it imported the app ({fd: what it is}): not the app's.
_inherited: dict[int, str] = {}

# Python's own warning (3.12+) at a fork with threads: we report those threads ourselves.
# Ignored only when raised by this module's os.fork() (a filter for the process's life,
# set once: warnings.catch_warnings() around the fork would swap the filters under the
# threads running), so the application's own forks still get it.
warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
                        r"fork\(\) may", DeprecationWarning, module=__name__.replace(".", r"\."))


def record_inherited_fds(known_fds, noted=False):
    """In the preloader, before the app is imported: what is open now is not the app's.
    `noted`: an earlier preloader of this master has said so already."""
    _inherited.clear()
    for fd in open_fds():
        if fd not in known_fds:
            target = fd_target(fd)
            if target is not None:
                _inherited[fd] = target
                if noted:
                    _reported.add(inherited_finding(fd, target).key)


# -- threads --------------------------------------------------------------------------------

def other_threads():
    """[(description, libraries.Owner or None, count)] for this process's threads but the
    calling one: a Python thread by its name and what it runs, a thread that C code
    started by the kernel's name for it (a library's by its name alone, counted)."""
    python_threads = {t.native_id: t for t in threading.enumerate()}
    me = threading.get_native_id()
    found, unnamed, named = [], [], collections.Counter()
    for thread in psutil.Process().threads():
        if thread.id == me:
            continue
        if thread.id in python_threads:
            found.append((*python_thread(python_threads[thread.id]), 1))
            continue
        name = native_thread_name(thread.id)
        if name is None:
            continue  # it exited meanwhile
        if libraries.native_thread_owner(name) is not None:
            named[name] += 1
        elif is_unnamed(name):
            unnamed.append("native %r (tid %d)" % (name, thread.id))
        else:
            found.append(("native %r (tid %d)" % (name, thread.id), None, 1))
    for name, count in named.items():
        found.append(("native %r" % name, libraries.native_thread_owner(name), count))
    if unnamed:
        found.extend(unnamed_threads(unnamed))
    return sorted(found, key=lambda item: item[0])


def python_thread(thread):
    target = getattr(thread, "_target", None) or getattr(thread, "function", None)  # a Timer
    if target is None:  # a Thread subclass with its own run()
        target = type(thread).run
    target = getattr(target, "func", target)  # a functools.partial
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    owner = libraries.thread_owner(module, thread.name)
    return "%r (%s.%s)" % (thread.name, module, qualname), owner


def native_thread_name(tid):
    try:
        with open("/proc/self/task/%d/comm" % tid) as comm:
            return comm.read().strip()
    except OSError:
        return None  # exited meanwhile


def is_unnamed(name):
    """A native thread that its library did not name carries the name of the thread that
    started it: the process title (ours or gunicorn's) or the program's name."""
    program = os.path.basename(sys.executable)[:15]
    return (name == native_thread_name(threading.get_native_id()) or name == program
            or name.startswith(("smartspawn", "gunicorn", "python")))


def unnamed_threads(descriptions):
    """Threads that no one named. Which library's a thread is cannot be told: when a pool
    that does not survive fork is loaded (GNU OpenMP), all are blamed with its fix; else a
    safe pool (gevent's, OpenBLAS) is granted as many as it has threads, and the others are
    unknown."""
    pools = libraries.pool_libraries(mapped_files())
    loaded = " and ".join("%s: %s" % (owner.library, os.path.basename(path))
                          for path, owner in sorted(pools.items()))
    unsafe = [owner for owner in pools.values() if not owner.safe]
    if unsafe:
        return [("unnamed native threads (%s loaded)" % loaded, unsafe[0], len(descriptions))]
    found, rest = [], list(descriptions)
    granted = min(libraries.gevent_threadpool_size(), len(rest))
    if granted:
        found.append(("unnamed native threads (the gevent hub's thread pool, which its DNS "
                      "resolver uses)", libraries.GEVENT_THREADPOOL, granted))
        rest = rest[granted:]
    for path, owner in sorted(pools.items()):
        granted = min(libraries.pool_size(path) or 0, len(rest))  # unknown: none
        if granted:
            found.append(("unnamed native threads (%s loaded)" % loaded, owner, granted))
            rest = rest[granted:]
    return found + [(description, None, 1) for description in rest]


# pid -> files, read once per process: a pool library loaded after that (by a template's
# requests) is not seen, and its threads are blamed as unknown.
_mapped: dict[int, set[str]] = {}


def mapped_files(fresh=False):
    """The files mapped into this process (read again if `fresh`). From /proc/self/maps
    itself: psutil's memory_maps() reads smaps, whose page accounting costs ~100x more, at
    every fork."""
    pid = os.getpid()
    if fresh or pid not in _mapped:
        # A file name need not be UTF-8: decoded as os.fsdecode() does, never failing.
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as maps:
            _mapped[pid] = {line.split(None, 5)[5].strip() for line in maps
                            if len(line.split(None, 5)) == 6}
    return _mapped[pid]


def thread_findings(hook):
    threads = other_threads()
    unsafe = [t for t in threads if t[1] is None or not t[1].safe]
    findings = []
    if unsafe:
        key = "threads: " + ", ".join(description for description, _, _ in unsafe)
        findings.append(Finding("unsafe", threads_warning(unsafe, hook), key))
    for description, owner, count in threads:
        if owner is not None and owner.safe:
            findings.append(Finding("info", "%s: %s's; %s: nothing to do" % (
                counted(description, count), owner.library, owner.after_fork), description))
    return findings


def counted(description, count):
    return description if count == 1 else "%s x%d" % (description, count)


def threads_warning(unsafe, hook):
    owners = {owner.library: owner for _, owner, _ in unsafe if owner}
    advice = ["%s: %s; %s" % (name, owner.after_fork, owner.fix.format(hook=hook))
              for name, owner in sorted(owners.items())]
    if any(owner is None for _, owner, _ in unsafe):
        advice.append("stop %s in the %s hook (and start one per worker in post_fork)"
                      % ("the others" if owners else "it", hook))
    return ("%d other thread(s) running (%s): a thread does not survive fork, and a lock it "
            "holds stays locked in every worker; %s" % (
                sum(count for _, _, count in unsafe),
                ", ".join(counted(d, count) for d, _, count in unsafe), "; ".join(advice)))


# -- objects and fds ------------------------------------------------------------------------

def object_findings(objects, hook):
    findings = []
    for shared in objects:
        about = "%s: %s" % (shared.library, shared.what)
        text = "%s: %s; %s" % (about, shared.after_fork, shared.fix.format(hook=hook))
        # The same object (a template inherits it at the same address), not its like.
        findings.append(Finding("info" if shared.safe else "unsafe", text,
                                "%s (object %#x)" % (about, shared.key)))
    return findings


def fd_findings(known_fds, claimed_fds, claimed_peers, hook):
    findings = []
    log_fds = logging_fds()
    for fd in open_fds():
        if fd in known_fds or fd in claimed_fds:
            continue
        target = fd_target(fd)
        if target is None:
            continue  # closed meanwhile (the fd of the listing itself)
        if _inherited.get(fd) == target:
            findings.append(inherited_finding(fd, target))
        elif target.startswith("socket:"):
            peer = connected_peer(fd)
            if peer and peer[0] == "udp":  # one datagram at a time: safe (a statsd client)
                what = "fd %d is a UDP socket connected to %s:%s" % (fd, *peer[1:])
                findings.append(Finding("debug", what + ", shared with every worker", what))
            elif peer and peer[1:] not in claimed_peers:
                findings.append(shared_finding("fd %d is a socket connected to %s" % (
                    fd, ":".join(map(str, peer))), target, hook))
        elif target.startswith("pipe:"):
            findings.append(shared_finding("fd %d is a pipe (%s)" % (fd, target), target,
                                           hook))
        elif fd > 2:
            findings.append(file_finding(fd, target, hook, log_fds))
    return findings


def file_finding(fd, target, hook, log_fds):
    what = "fd %d is %s" % (fd, target)
    if shared_lock(fd):
        return Finding("unsafe", "%s, locked with flock(): the lock belongs to the open file, "
                       "which every worker would share, so every worker would hold it; take "
                       "the lock in each worker (post_fork, post_worker_init) instead, or "
                       "close the file in the %s hook" % (what, hook), what)
    if fd in log_fds or not read_at_a_shared_offset(fd, target):
        return Finding("debug", what + ", shared with every worker", what)
    if target.endswith((".py", ".pyc")):
        # The import system, in another thread, reading a module as we fork (Sentry's
        # worker thread did, in CI): it reads the file whole and closes it at once.
        return Finding("debug", what + ", a module another thread is importing", what)
    if target in mapped_files(fresh=True):
        return Finding("debug", what + ", mapped into memory (mmap keeps its own fd): "
                       "shared with every worker, as a mapping is", what)
    return Finding("unsafe", "%s, open for reading: every worker would share its offset, so a "
                   "seek() and read() in one worker reads where another moved it (a reader "
                   "kept from import: a MaxMind database in file mode, a zipfile.ZipFile, a "
                   "tarfile, shelve/dbm, an index); close it in the %s hook and open it in "
                   "each worker (post_fork, or on first use); reopening it in post_fork, or "
                   "reading it only with os.pread(), also fixes the reads" % (what, hook), what)


def shared_lock(fd):
    """Whether `fd`'s open file holds an flock() or OFD lock: one that belongs to the open
    file, so a fork shares it (a POSIX fcntl lock belongs to the process: a child has none)."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as info:
            locks = [line.split()[2] for line in info if line.startswith("lock:")]
    except OSError:
        return False
    return any(kind in ("FLOCK", "OFDLCK") for kind in locks)


def logging_fds():
    """The fds of the logging module's file handlers: a log opened "a+" is written, never
    read."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    fds = set()
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            try:
                fds.add(handler.stream.fileno())
            except (AttributeError, OSError, ValueError):
                pass  # not a stream handler, or closed
    return fds


def read_at_a_shared_offset(fd, target):
    """Whether `fd` is a regular file that this process can read with read() (not one
    only written to, an O_PATH handle, or a memfd: memory the app maps, not reads)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False  # closed meanwhile
    readable = flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)
    return readable and not flags & os.O_PATH and not target.startswith("/memfd:")


def inherited_finding(fd, target):
    what = "fd %d (%s) was open before the app was imported" % (fd, target)
    return Finding("debug", what + ": inherited from the master, or from what started "
                   "gunicorn (plain gunicorn's workers have it too); not the app's", what)


def shared_finding(what, target, hook):
    """`target`: the fd's socket:[inode] or pipe:[inode], in the key (a new socket may take
    the fd number of one reported)."""
    return Finding("unsafe", "%s; it would be shared with every worker: close it in the %s "
                   "hook" % (what, hook), "%s %s" % (what, target))


def open_fds():
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def fd_target(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return None


def connected_peer(fd):
    """(kind, host, port) of the peer of socket `fd`, or None (listening, unconnected, or
    not an IP or Unix socket: netlink...); a Unix socket's is ("unix", path)."""
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
            return "unix", peer or "<anonymous socketpair>"
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        kind = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
        return kind, peer[0].removeprefix("::ffff:"), peer[1]  # an IPv4-mapped address


# -- the checks -----------------------------------------------------------------------------

def inspect_process(known_fds, hook, live_objects):
    """(every Finding about this process before it forks, the SharedObjects found)."""
    objects = libraries.shared_objects(live_objects)
    fds = {fd for shared in objects for fd in shared.fds}
    peers = {peer for shared in objects for peer in shared.peers}
    return (thread_findings(hook) + object_findings(objects, hook)
            + fd_findings(known_fds, fds, peers, hook)), objects


def check(cfg, log, role, hook, known_fds):
    """Apply `fork_recipes` and `fork_safety` before `role` forks; raises ForkUnsafe when
    strict."""
    if cfg.fork_safety == "off" and not cfg.fork_recipes:
        return
    try:
        findings = inspect_before_fork(cfg, log, role, hook, known_fds)
    except Exception as exc:  # noqa: BLE001 (a check that fails must not stop a boot)
        if cfg.fork_safety == "strict":
            raise refusal(role, "the check failed: %r" % exc) from exc
        log.exception("fork safety (%s): the check failed; forking anyway", role)
        return
    report(cfg, log, role, findings)


def inspect_before_fork(cfg, log, role, hook, known_fds):
    """The recipes applied, what fork safety finds ([] when off)."""
    live_objects = libraries.live_objects()
    if libraries.shared_objects(live_objects):
        # A connection no one holds any more is not the app's to close: collect, look
        # again (a full collection costs ~0.3 s per million objects: only when something
        # was found).
        del live_objects
        gc.collect()
        live_objects = libraries.live_objects()
    if cfg.fork_recipes:
        libraries.apply_recipes(log, role, live_objects)
    if cfg.fork_safety == "off":
        libraries.remember(live_objects, [])
        return []
    findings, objects = inspect_process(known_fds, hook, live_objects)
    libraries.remember(live_objects, objects)
    return findings


def report(cfg, log, role, findings):
    """Log what was not reported before; strict: raise for anything unsafe."""
    for finding in findings:
        said = _reported_unsafe if finding.level == "unsafe" else _reported
        if finding.key not in said:
            said.add(finding.key)
            getattr(log, LOG_LEVELS[finding.level])("fork safety (%s): %s", role, finding.text)
    unsafe = [f.text for f in findings if f.level == "unsafe"]
    if unsafe and cfg.fork_safety == "strict":
        raise refusal(role, "; ".join(unsafe))


def refusal(role, what):
    return ForkUnsafe("fork_safety = 'strict': the %s refuses to fork: %s" % (role, what))


def fork(cfg, log, role, hook, fork_process=None):
    """os.fork() (or `fork_process`) for a spawner: threads started since the check are
    reported (strict: ForkUnsafe, no fork), in place of Python's nameless
    DeprecationWarning."""
    if cfg.fork_safety != "off":
        try:
            findings = thread_findings(hook)
        except Exception:  # noqa: BLE001 (as in check())
            log.exception("fork safety (%s): the check of threads failed", role)
            findings = []
        report(cfg, log, role, findings)
    return (fork_process or os.fork)()


def fork_again():
    """os.fork() in the middle of a double fork: the threads that at-fork handlers start
    in it (OpenTelemetry's) were reported by the spawner; Python's warning is not due."""
    return os.fork()
