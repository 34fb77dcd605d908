"""Linux process controls smart spawning needs, in one place.

prctl(2) is reached through ctypes: two calls do not justify a compiled dependency.
"""
import ctypes
import ctypes.util
import os
import signal
import sys

# A free-threaded CPython (3.13t, 3.14t): other object headers, another collector. Its
# ABI flag says so; sysconfig's Py_GIL_DISABLED would load the build's variables, a dict
# of about 1 MiB, into every process.
FREE_THREADED = "t" in getattr(sys, "abiflags", "")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc: find_library forks ldconfig, so only as a fallback
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _prctl(option, arg):
    if _libc is None:
        raise OSError("prctl is Linux only")
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def smart_spawn_unsupported():
    """Why this platform cannot smart-spawn, or None when it can."""
    if _libc is None:
        return "smart spawning needs Linux's PR_SET_CHILD_SUBREAPER; this is %s" % sys.platform
    if not hasattr(os, "fork") or not hasattr(__import__("socket"), "send_fds"):
        return "smart spawning needs os.fork and socket.send_fds"
    if FREE_THREADED:
        # Its object headers and collector differ: gc.freeze() and copy-on-write sharing
        # as smart spawning uses them are untested there.
        return ("this CPython is a free-threaded build (Py_GIL_DISABLED), on which smart "
                "spawning is not supported")
    return None


def become_subreaper():
    """Orphaned descendants (the preloader's grandchildren) get re-parented to us."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent_pid, sig=signal.SIGKILL):
    """Ask the kernel to send `sig` when our parent dies; False if it already has.

    The check after the prctl closes the race where the parent died before it took effect.
    setuid()/setgid() clear this setting: call it again after dropping privileges.
    """
    _prctl(PR_SET_PDEATHSIG, sig)
    return os.getppid() == parent_pid


MADV_POPULATE_WRITE = 23  # Linux 5.14


def populate_write(start, length):
    """Fault in [start, start + length) as if each page were written (copy-on-write
    pages are copied), without changing a byte. OSError on a kernel without it (EINVAL)
    or a range not mapped (ENOMEM)."""
    if _libc is None:
        raise OSError("madvise is Linux only")
    if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length),
                     MADV_POPULATE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
