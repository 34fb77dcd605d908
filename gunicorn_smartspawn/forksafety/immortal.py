"""gc_freeze = "immortal": make a spawner's heap immortal before it forks (CPython 3.12+).

Reading an object writes its reference count, so a worker copies every page it reads,
frozen or not: gc.freeze() only keeps the collector's own writes off them. The count of
an immortal object (PEP 683) is never written. No public API makes an existing heap
immortal, so this writes the object header itself, as the interpreter lays it out
(64-bit, default build; docs/immortal.md):

- 3.12, 3.13: ``Py_ssize_t ob_refcnt``. Immortal when the low 32 bits, as an int32, are
  negative; Py_INCREF stops writing at 0xFFFFFFFF (``_Py_IMMORTAL_REFCNT``): set to that.
- 3.14: ``uint32 ob_refcnt; uint16 ob_overflow; uint16 ob_flags``. Py_INCREF stops
  writing at ``3 << 30``; the count is set above it, with headroom for the references
  taken before, which are released without a check. The interpreter's stack references
  read ``ob_flags & 1`` (``_Py_IMMORTAL_FLAGS``), not the count: without the flag, every
  read still writes.

Objects that are immortal already (None, small ints, static types and strings, the
interpreter's interned strings) are left as they are: their headers carry other flags.
"""
import ctypes
import functools
import gc
from itertools import compress
from operator import not_
import platform
import sys
import time
import types

from gunicorn_smartspawn.shared import _linux

IMMORTAL_BIT = 1 << 31            # (int32) ob_refcnt < 0, on 3.12 to 3.14
if sys.version_info >= (3, 14):
    KEPT_BITS = 0xFFFF_FFFF_0000_0000    # ob_overflow, ob_flags
    SET_BITS = (1 << 48) | (7 << 29)     # _Py_IMMORTAL_FLAGS; count 0xE0000000
else:
    KEPT_BITS = 0
    SET_BITS = 0xFFFF_FFFF               # _Py_IMMORTAL_REFCNT
IS_IMMORTAL = getattr(sys, "_is_immortal", None)  # 3.14
BATCH = 10_000                     # objects per gc.get_referents() call
SLICE = 100_000                    # objects made immortal between two pacer ticks
# How often a long pass calls its `beat` (seconds): a template is still a worker to
# gunicorn's master, which kills a worker whose heartbeat is older than `timeout`.
BEAT_INTERVAL = 0.5


class WalkFailed(RuntimeError):
    pass


def unsupported():
    """Why this interpreter's heap cannot be made immortal, or None."""
    version = "%s %s" % (platform.python_implementation(), platform.python_version())
    if sys.implementation.name != "cpython":
        return "%s is not CPython" % version
    if sys.version_info < (3, 12):
        return "%s has no immortal objects (CPython 3.12 and later do)" % version
    if _linux.FREE_THREADED:
        return "%s is a free-threaded build, whose object header differs" % version
    if sys.version_info >= (3, 15):
        return ("%s: its object header is not known to this smartspawn (it knows "
                "3.12 to 3.14)" % version)
    if sys.maxsize < 2**32 or sys.byteorder != "little":
        return "%s is not a 64-bit little-endian build" % version
    if not header_as_expected():
        return ("%s does not lay out the object header as expected (a --with-trace-refs "
                "build?)" % version)
    return None


@functools.cache
def address_space_type():
    """The user address space of x86-64 and arm64 (2**48 bytes) as 64-bit words: word
    id(obj) >> 3 is an object's first. Made (and cached) before any walk: made during
    one, the type would be left in ctypes' cache, made immortal by the walk."""
    return ctypes.c_uint64 * (1 << 45)


def address_space():
    return memoryview(address_space_type().from_address(0)).cast("B").cast("Q")


def header_as_expected():
    """The reference count is the low 32 bits of an object's first word: three more
    references to a fresh object add 3 there and nothing else."""
    probe, words = [], address_space()
    try:
        before = words[id(probe) >> 3]
        references = [probe] * 3
        after = words[id(probe) >> 3]
    finally:
        words.release()
    del references
    return 0 < before < 1 << 16 and after == before + 3


# Objects that refer to no other: made immortal, never walked through.
ATOMS = frozenset({str, int, float, bytes, bool, complex})


def make_immortal(objects, words, again, pacer):
    """make_some_immortal() on `objects`, a slice at a time (one list may hold tens of
    millions), ticking `pacer` after each."""
    made = 0
    for start in range(0, len(objects), SLICE):
        made += make_some_immortal(objects[start:start + SLICE], words, again)
        pacer.tick()
    return made


def make_some_immortal(objects, words, again):
    """Make each mortal object of `objects` immortal; returns how many it changed. Adds
    to `again` those of them that may refer to others, and the untracked dicts that were
    immortal already (filled since, maybe).

    On 3.14 the objects immortal already (most of a walk's: the tracked ones met again,
    interned keys) are left out by sys._is_immortal in a C loop, before the Python loop
    (0.6 us an object); none of them is an untracked dict: 3.14 tracks every dict."""
    made = 0
    revisit = again.append
    for obj in maybe_mortal(objects):
        index = id(obj) >> 3
        word = words[index]
        if word & IMMORTAL_BIT:
            if type(obj) is dict and not gc.is_tracked(obj):
                revisit(obj)
            continue  # immortal already (static, or made so earlier)
        words[index] = (word & KEPT_BITS) | SET_BITS
        made += 1
        if type(obj) not in ATOMS:
            revisit(obj)
    return made


def maybe_mortal(objects):
    """Those of `objects` that may be mortal. On 3.14, the ones sys._is_immortal (the
    interpreter's own test, the bit IMMORTAL_BIT) says are not immortal; on 3.12 and
    3.13 all of them: sys.getrefcount() in such a C loop makes an int of each count,
    and costs more than it saves."""
    if IS_IMMORTAL is None:
        return objects
    return compress(objects, map(not_, map(IS_IMMORTAL, objects)))


def hidden_referents(objects):
    """What gc.get_referents() leaves out: the keys of a dict whose keys are all strings
    (its traversal visits the values only), and what a code object holds (it has none)."""
    found = []
    code, keys = types.CodeType, dict.keys
    for obj in objects:
        kind = type(obj)
        if kind is dict:
            found += obj  # its keys
        elif kind is code:
            found += (obj.co_consts, obj.co_names, obj.co_linetable, obj.co_exceptiontable,
                      obj.co_filename, obj.co_name, obj.co_qualname)
        elif isinstance(obj, dict):
            found += keys(obj)
    return found


class Pacer:
    """Calls `beat` at most every BEAT_INTERVAL seconds, when ticked."""

    def __init__(self, beat):
        self.beat = beat
        self.last = time.monotonic()

    def tick(self):
        now = time.monotonic()
        if now - self.last >= BEAT_INTERVAL:
            self.beat()
            self.last = now


def make_heap_immortal(beat=lambda: None):
    """Make every object the collector tracks, and everything they reach, immortal; then
    freeze the heap. Call after gc.collect(): garbage made immortal is never freed.
    `beat` is called every BEAT_INTERVAL seconds or so (a worker's heartbeat): on tens of
    millions of objects the pass takes longer than gunicorn's `timeout`.

    Returns (objects made immortal, objects walked, seconds). The walk goes past an
    object that was immortal already only when the collector tracks it (each is walked
    once) or it is an untracked dict: a tuple of atoms cannot change, but a container
    immortal since an earlier pass (the preloader's, in a template) may hold objects
    added since. The snapshot is taken before the walk makes anything: nothing of the
    walk is in it, nor reachable from it, so none of it is made immortal, and all of it
    is freed on return.
    """
    started = time.perf_counter()
    address_space_type()
    gc.unfreeze()  # frozen objects are not in gc.get_objects()
    try:
        tracked = gc.get_objects()
        pacer = Pacer(beat)  # made after the snapshot: not made immortal
        words = address_space()
        try:
            made = make_immortal(tracked, words, [], pacer)
            untracked = walk_from(tracked, words, pacer)
        except IndexError:
            raise WalkFailed("an object lies above the 2**48 bytes of address space "
                             "this walk covers") from None
        finally:
            words.release()
    finally:
        gc.freeze()
    trim_malloc_heap()
    return made + untracked, len(tracked) + untracked, time.perf_counter() - started


def trim_malloc_heap():
    """Give back to the system the free pages of glibc's heap (malloc_trim(0); elsewhere,
    nothing). Some are left free by the walk; whatever is still free when the spawner
    forks is a page every process forked from it shares, and the first to reuse it
    copies it: about 2.5 MiB per spawner on the read benchmark (docs/immortal.md)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def walk_from(objects, words, pacer):
    """Make immortal what `objects` refer to, and on down, a batch at a time (so that the
    walk holds no list of every reference in the heap); returns how many it made so."""
    made = 0
    while objects:
        following = []
        for start in range(0, len(objects), BATCH):
            batch = objects[start:start + BATCH]
            # Untracked, all of them (the tracked ones were made immortal first): no cycle.
            made += make_immortal(gc.get_referents(*batch) + hidden_referents(batch),
                                  words, following, pacer)
        objects = following
    return made
