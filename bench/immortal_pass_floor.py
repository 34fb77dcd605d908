#!/usr/bin/env python
"""The floor of gc_freeze = "immortal"'s pass in Python (issue 27, target 6: <= 0.3 s per
million objects walked), in one process, on the CPython running this script.

Builds bench/apps/lazy_cache.py's ~100 MB cache, runs the pass (immortal.make_heap_immortal)
recording every batch it hands to make_some_immortal(), then times, on the same objects:

  pass        the pass itself (CPU seconds per million objects walked);
  write       the least any Python pass does for each object it makes immortal: its id
              and a read-modify-write of its header word (docs/immortal.md), timed on
              the distinct objects the walk met (immortal by then: the same work);
  tests       the test of every object the walk met: immortal already? On 3.12 and 3.13
              a Python loop (id, read the header, test a bit); on 3.14 the C loop the
              pass uses (map over sys._is_immortal).

The floor is the tests and the writes; the walk's own work (gc.get_referents, the lists)
comes on top.

CPU time (time.process_time), best of --repeat for the loops; the machine's load changes
little. Prints one line per figure; --json PATH writes them.

    python bench/immortal_pass_floor.py [--repeat N] [--json PATH]
"""
import argparse
import gc
import json
import sys
import time
from collections import deque
from itertools import chain
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "apps")]

from gunicorn_smartspawn.forksafety import immortal  # noqa: E402


def record_the_walk():
    """Runs the pass on a fresh cache; returns (objects made immortal, objects walked, CPU
    seconds, every batch of objects the walk met)."""
    import lazy_cache
    lazy_cache.build_cache()
    gc.collect()
    batches = []
    make_some = immortal.make_some_immortal

    def recording(objects, words, again):
        batches.append(objects)  # a list or a slice of one, made for the call: no copy
        return make_some(objects, words, again)

    immortal.make_some_immortal = recording
    try:
        started = time.process_time()
        made, walked, _seconds = immortal.make_heap_immortal()
        return made, walked, time.process_time() - started, batches
    finally:
        immortal.make_some_immortal = make_some


def header_writes(objects):
    """The least per object a Python pass does: id, read the header, write it back."""
    words, kept, set_bits = immortal.address_space(), immortal.KEPT_BITS, immortal.SET_BITS
    started = time.process_time()
    for obj in objects:
        index = id(obj) >> 3
        words[index] = (words[index] & kept) | set_bits  # the value it has already
    return time.process_time() - started


def header_reads(met):
    """What 3.12 and 3.13, with no test of their own in C, do for each object met."""
    words, bit = immortal.address_space(), immortal.IMMORTAL_BIT
    started = time.process_time()
    for obj in met:
        if words[id(obj) >> 3] & bit:
            continue
    return time.process_time() - started


def c_reads(met):
    started = time.process_time()
    deque(map(immortal.IS_IMMORTAL, met), maxlen=0)
    return time.process_time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    why = immortal.unsupported()
    if why:
        sys.exit("%s: nothing to measure" % why)
    made, walked, pass_seconds, batches = record_the_walk()
    met = list(chain.from_iterable(batches))
    distinct = list({id(obj): obj for obj in met}.values())  # immortal now, all of them
    per_million = 1e6 / walked
    writes = min(header_writes(distinct) for _ in range(args.repeat)) / len(distinct)
    figures = {
        "python": sys.version.split()[0], "walked": walked, "made": made, "met": len(met),
        "pass_s_per_million": pass_seconds * per_million,
        "write_ns_per_object": writes * 1e9,
        "write_floor_s_per_million": writes * made * per_million,
    }
    print("CPython %(python)s: walked %(walked)d objects, made %(made)d immortal, met "
          "%(met)d on the way" % figures)
    print("  the pass:                 %.2f s per million walked" %
          figures["pass_s_per_million"])
    print("  Python floor, the writes: %.0f ns per object made immortal = %.2f s per "
          "million walked" % (figures["write_ns_per_object"],
                              figures["write_floor_s_per_million"]))
    if immortal.IS_IMMORTAL is None:
        reads, how = header_reads, "Python floor, the tests:  "
    else:
        reads, how = c_reads, "C, the tests:             "
    seconds = min(reads(met) for _ in range(args.repeat))
    figures["test_ns_per_met"] = seconds / len(met) * 1e9
    figures["test_floor_s_per_million"] = seconds * per_million
    figures["floor_s_per_million"] = (figures["test_floor_s_per_million"]
                                      + figures["write_floor_s_per_million"])
    print("  %s%.0f ns per object met = %.2f s per million walked" % (
        how, figures["test_ns_per_met"], figures["test_floor_s_per_million"]))
    print("  the floor (tests + writes): %.2f s per million walked" %
          figures["floor_s_per_million"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
