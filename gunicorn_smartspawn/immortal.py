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

Objects that are immortal already (None, small ints, static types and strings, interned
strings) are left as they are: that check is also how the walk knows where it has been.
"""
import contextlib
import ctypes
import gc
import platform
import sys
import sysconfig
import time

IMMORTAL_BIT = 1 << 31            # (int32) ob_refcnt < 0, on 3.12 to 3.14
if sys.version_info >= (3, 14):
    KEPT_BITS = 0xFFFF_FFFF_0000_0000    # ob_overflow, ob_flags
    SET_BITS = (1 << 48) | (7 << 29)     # _Py_IMMORTAL_FLAGS; count 0xE0000000
else:
    KEPT_BITS = 0
    SET_BITS = 0xFFFF_FFFF               # _Py_IMMORTAL_REFCNT
# The whole user address space of x86-64 and arm64 (2**47 bytes) as 64-bit words: word
# id(obj) >> 3 is the first of an object. Made here, at import: made during a walk, the
# type would land in ctypes' cache, which the walk would then make immortal.
ADDRESS_SPACE = ctypes.c_uint64 * (1 << 44)
BATCH = 10_000                     # objects per gc.get_referents() call


def unsupported():
    """Why this interpreter's heap cannot be made immortal, or None."""
    version = "%s %s" % (platform.python_implementation(), platform.python_version())
    if sys.implementation.name != "cpython":
        return "%s is not CPython" % version
    if sys.version_info < (3, 12):
        return "%s has no immortal objects (CPython 3.12 and later do)" % version
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "%s is a free-threaded build, whose object header differs" % version
    if sys.version_info >= (3, 15):
        return ("%s: its object header is not known to this smartspawn (it knows "
                "3.12 to 3.14)" % version)
    if sys.maxsize < 2**32 or sys.byteorder != "little":
        return "%s is not a 64-bit little-endian build" % version
    if not header_as_expected():
        return "%s does not lay out the object header as expected (a debug build?)" % version
    return None


@contextlib.contextmanager
def address_space():
    words = memoryview(ADDRESS_SPACE.from_address(0)).cast("B").cast("Q")
    try:
        yield words
    finally:
        words.release()


def header_as_expected():
    """The reference count is the low 32 bits of an object's first word: three more
    references to a fresh object add 3 there and nothing else."""
    probe = []
    with address_space() as words:
        before = words[id(probe) >> 3]
        references = [probe] * 3
        after = words[id(probe) >> 3]
    del references
    return 0 < before < 1 << 16 and after == before + 3


def make_immortal(objects, words):
    """Make each mortal object of `objects` immortal; returns those it changed."""
    changed = []
    remember = changed.append
    for obj in objects:
        index = id(obj) >> 3
        word = words[index]
        if word & IMMORTAL_BIT:
            continue  # immortal already, or made so earlier in this walk
        words[index] = (word & KEPT_BITS) | SET_BITS
        remember(obj)
    return changed


def make_heap_immortal():
    """Make every object the collector tracks, and everything they reach, immortal.

    Call after gc.collect() (garbage made immortal is never freed) and follow with
    gc.freeze(). Returns (objects made immortal, seconds). What the walk itself makes
    (these lists, the view) is reachable from no object it walks: none of it is made
    immortal, and all of it is freed on return.
    """
    started = time.perf_counter()
    gc.unfreeze()  # frozen objects are not in gc.get_objects()
    count = 0
    with address_space() as words:
        found = make_immortal(gc.get_objects(), words)
        while found:
            count += len(found)
            # What they refer to: strings, numbers and the containers the collector does
            # not track (a tuple or dict of atoms) are reached only this way.
            reached = []
            for start in range(0, len(found), BATCH):
                reached += make_immortal(gc.get_referents(*found[start:start + BATCH]),
                                         words)
            found = reached
    return count, time.perf_counter() - started
