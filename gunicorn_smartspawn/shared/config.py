"""smartspawn's settings, declared as gunicorn Settings.

gunicorn builds its settings table before it imports the worker class, so at first start
it ignores these names in gunicorn.conf.py. `install_settings()` adds them to the live
Config and applies the values from the config module through each Setting's validator.
After a HUP gunicorn parses them natively: importing this module registered them in
gunicorn's KNOWN_SETTINGS.
"""
from __future__ import annotations

import argparse
import difflib
import gc
import importlib.util
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Protocol

from gunicorn.config import KNOWN_SETTINGS, Setting, validate_bool, validate_callable
from gunicorn.errors import ConfigError

from gunicorn_smartspawn.shared import cgroup

if TYPE_CHECKING:  # the hooks' annotations
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter
    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from gunicorn.workers.base import Worker

SECTION = "Smart Spawning"


# -- command-line values (`smartspawn run --fork-worker 1000`) ----------------------------
# Each `cli_parse` turns a flag's text into the value a config file would give; the
# setting's validator then checks it, as for the config file (CliValue, at the end).

def parse_bool_or(parse):
    def parse_text(text):
        if text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        return parse(text)
    return parse_text


def parse_int(text):
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def parse_number(text):
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("must be a number") from None


def parse_int_list(text):
    """"1000" -> 1000; "50,500,5000" -> [50, 500, 5000]."""
    try:
        values = [int(part.strip()) for part in text.split(",")]
    except ValueError:
        raise ValueError("must be true, false, a number of requests or a comma-separated "
                         "list of them") from None
    return values[0] if len(values) == 1 else values


def parse_oob_gc(text):
    """`--oob-gc` alone is "true" (its argparse const); `--oob-gc 25`, `--oob-gc false`.
    Like gunicorn's `--proxy-protocol [MODE]`, a bare flag takes the next argument as its
    value: the error says so, for `--oob-gc app:app`."""
    try:
        return parse_bool_or(parse_int)(text)
    except ValueError:
        raise ValueError("must be true, false or a number of requests (a bare --oob-gc "
                         "takes the next argument: write --oob-gc=true, or put it after "
                         "the app)") from None


parse_requests = parse_bool_or(parse_int_list)


def validate_spawn_method(val):
    if not isinstance(val, str) or val.strip().lower() not in ("smart", "direct"):
        raise ValueError('must be "smart" or "direct"')
    return val.strip().lower()


def validate_positive(val):
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise TypeError("must be a number")
    if not math.isfinite(val) or val <= 0:
        raise ValueError("must be a finite number > 0")
    return float(val)


def validate_optional_seconds(val):
    return None if val is None else validate_positive(val)


class SpawnMethod(Setting):
    name = "spawn_method"
    section = SECTION
    cli = ["--spawn-method"]
    meta = "STRING"
    validator = validate_spawn_method
    default = "smart"
    desc = """\
        How workers are started: ``"smart"`` or ``"direct"``.

        ``smart`` (the default) starts one preloader process that imports the application
        once; every worker is then ``fork()``ed from it, boots in milliseconds and shares
        the application's memory copy-on-write. The master never imports the application,
        and ``kill -HUP`` loads new code in a new preloader.

        ``direct`` is gunicorn's own behaviour without ``--preload``: each worker is forked
        from the master and imports the application itself.

        Where the platform lacks what smart spawning needs (Linux's
        ``PR_SET_CHILD_SUBREAPER``), or with ``--reload``, smartspawn falls back to
        ``direct`` with one warning. Read at start; a change takes effect on USR2, not HUP.
        """


def validate_gc_freeze(val):
    if isinstance(val, str) and val.strip().lower() == "immortal":
        return "immortal"
    try:
        return validate_bool(val)
    except (TypeError, ValueError):
        raise ValueError('must be true, false or "immortal"') from None


class GcFreeze(Setting):
    name = "gc_freeze"
    section = SECTION
    cli = ["--gc-freeze"]
    meta = "BOOL|immortal"
    validator = validate_gc_freeze
    default = True
    desc = """\
        ``True``, ``False`` or ``"immortal"``.

        ``True``: run ``gc.collect()`` then ``gc.freeze()`` in the preloader, and in a
        template, right before every fork (the same order on every CPython:
        docs/pythons.md). Frozen objects are left alone by the cyclic garbage collector
        of the workers, so collections there do not write to (and un-share) the pages
        the application (or the template's warmed caches) were loaded into.

        ``"immortal"`` (CPython 3.12 to 3.14): also, once the preloader has loaded the
        app and once a template is ready, every object the collector tracks, and every
        object they reach, is made immortal: a worker that reads them no longer writes
        their reference counts, so the pages stay shared. Immortal objects are never
        freed: read docs/immortal.md before turning it on. Elsewhere it warns once and
        acts as ``True``.
        """


class PreloaderBootTimeout(Setting):
    name = "preloader_boot_timeout"
    section = SECTION
    cli = ["--preloader-boot-timeout"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_optional_seconds
    default = None
    desc = """\
        Seconds the preloader may take to import the application.

        ``None`` (the default): no limit, as in gunicorn, whose ``timeout`` starts only
        at a worker's first heartbeat, after the import (a model or a cold Django
        project may take minutes). A preloader that takes longer is killed: at startup
        gunicorn stops with exit code 3, later (a restart or a HUP) the running workers
        keep serving and the error is logged.
        """


class PreloaderView(Protocol):
    """What ``on_preload`` is given: spawner/preloader.py's Preloader, as hooks see it."""
    app: BaseApplication
    cfg: Config
    log: Logger
    generation: int


class OnPreload(Setting):
    name = "on_preload"
    section = "Server Hooks"
    validator = validate_callable(1)
    type = callable

    def on_preload(preloader: PreloaderView) -> None:
        pass
    default = staticmethod(on_preload)
    desc = """\
        Called in the preloader after the application is loaded, before the first fork.

        The callable takes the Preloader (``preloader.app``, ``preloader.cfg``,
        ``preloader.log``, ``preloader.generation``). Close connections to databases and
        caches here: every worker would otherwise share the same socket.
        """


def validate_fork_worker(val):
    """-> a tuple of request thresholds; () is off. bool is tested first: True is 1000."""
    if val is None or val is False or (type(val) is int and val == 0):
        return ()
    if val is True:
        return (1000,)
    thresholds = val if isinstance(val, (list, tuple)) else [val]
    for n in thresholds:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("must be True, False, a number of requests or a list of them")
    if not thresholds or min(thresholds) < 1:
        raise ValueError("request counts must be >= 1")
    return tuple(thresholds)


class ForkWorker(Setting):
    name = "fork_worker"
    section = SECTION
    cli = ["--fork-worker"]
    meta = "N[,N...]"
    cli_parse = staticmethod(parse_requests)
    validator = validate_fork_worker
    default = False
    desc = """\
        Refork every worker from a warmed worker ("template") after it served N requests.

        ``fork_worker = 1000``: once worker-0 (the oldest worker of the current
        generation) has served 1000 requests, one of the workers past that count (an
        idle one first, worker-0 among equals) stops accepting, finishes its requests,
        runs ``gc.collect()`` + ``gc.freeze()`` and becomes the template; every other
        worker is then replaced, one at a time, by a fork of it, so that memory filled
        after boot (caches, lazy imports) is shared too. ``True`` means 1000; a list such
        as ``[50, 500, 5000]`` reforks at each threshold in turn, each counted on
        worker-0 of the generation; after the last one, no automatic refork.
        ``False`` or 0 (the default): off. ``kill -URG <master>`` reforks at any time
        when it is on. Needs ``workers >= 2``.
        """


class OnRefork(Setting):
    name = "on_refork"
    section = "Server Hooks"
    validator = validate_callable(1)
    type = callable

    def on_refork(server: Arbiter) -> None:
        pass
    default = staticmethod(on_refork)
    desc = """\
        Called in the master when a refork starts (``fork_worker``).

        The callable takes the Arbiter.
        """


class PreTemplateFork(Setting):
    name = "pre_template_fork"
    section = "Server Hooks"
    validator = validate_callable(1)
    type = callable

    def pre_template_fork(worker: Worker) -> None:
        pass
    default = staticmethod(pre_template_fork)
    desc = """\
        Called in the worker that becomes the template, just before it forks.

        The callable takes the Worker. Close connections that must not be shared by the
        workers forked from it (databases, caches): they would all use the same socket.
        """


def validate_fork_safety(val):
    if not isinstance(val, str) or val.strip().lower() not in ("warn", "strict", "off"):
        raise ValueError('must be "warn", "strict" or "off"')
    return val.strip().lower()


class ForkSafety(Setting):
    name = "fork_safety"
    section = SECTION
    cli = ["--fork-safety"]
    meta = "STRING"
    validator = validate_fork_safety
    default = "warn"
    desc = """\
        What to do when the preloader or a template is about to fork with something
        unsafe to share: ``"warn"`` (the default), ``"strict"`` or ``"off"``.

        Checked just before the first fork (after ``on_preload``, or after
        ``pre_template_fork``): other threads (they do not survive fork), objects unsafe
        to share (an open sqlite3 or DB-API connection, an SQLAlchemy pool holding
        connections, a urllib3 connection, a grpc channel, an asyncio loop), and sockets
        connected to a peer and pipes that the application opened. ``warn`` logs one line
        per finding, naming the library, the object and its fix; ``strict`` refuses to
        fork: at startup gunicorn exits with code 3, a template gives up its refork.

        Not blamed, noted at info level once: the threads that their library starts again
        after fork (OpenTelemetry, Sentry, OpenBLAS and OpenMP pools, grpc with
        ``GRPC_ENABLE_FORK_SUPPORT``), and the fds that were open before the application was
        imported (inherited from the master or from what started gunicorn). A regular file
        the application opened for reading is blamed (its offset is shared), and so is one
        it locked with ``flock()``; logs and memory-mapped files are fine to share (logged
        at debug level). See docs/fork-safety.md.
        """


class ForkRecipes(Setting):
    name = "fork_recipes"
    section = SECTION
    cli = ["--fork-recipes"]
    action = "store_true"
    validator = validate_bool
    default = False
    desc = """\
        Apply the fork recipes that libraries document before the preloader or a template
        forks (after ``on_preload`` or ``pre_template_fork``, before the ``fork_safety``
        check).

        Django: what ``django.db.connections.close_all()`` does, for every thread's
        connections; SQLAlchemy: ``engine.dispose()`` on every engine (not an
        ``AsyncEngine``: that must be awaited), which closes the connections in its pool.
        The workers open their own. Off by default: it closes what the application opened.
        """


def validate_oob_gc(val):
    """-> True (adaptive), N >= 1 (every N requests) or False. bool first: it is an int."""
    if val is None or val is False or (type(val) is int and val == 0):
        return False
    if val is True:
        return True
    if isinstance(val, bool) or not isinstance(val, int):
        raise TypeError("must be True (adaptive), False or a number of requests")
    if val < 1:
        raise ValueError("a number of requests must be >= 1")
    return val


def validate_oob_gc_generation(val):
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int) or val not in (0, 1, 2):
        raise ValueError("must be 0, 1, 2 or None (what the counters call for)")
    return val


def validate_oob_concurrency(val):
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ValueError("must be an int >= 1, or None (a quarter of the workers)")
    return val


HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
# Stripping one of these from every response would break HTTP framing.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection", "content-type"}


def validate_oob_work_header(val):
    if val is None or val == "":
        return None
    if not isinstance(val, str) or not HEADER_NAME.fullmatch(val):
        raise ValueError("must be a header name (letters, digits, '-') or None")
    if val.lower() in FRAMING_HEADERS:
        raise ValueError("must not be a header HTTP needs (it is stripped from responses)")
    return val


class OobGc(Setting):
    name = "oob_gc"
    section = SECTION
    cli = ["--oob-gc"]
    meta = "N"
    nargs = "?"
    const = "true"
    cli_parse = staticmethod(parse_oob_gc)
    validator = validate_oob_gc
    default = False
    desc = """\
        Run the cyclic garbage collector between requests instead of inside them.

        ``True``: adaptive. While it serves, a worker raises the collector's gen0
        threshold to 70,000 (or twice the application's own, if higher); after each
        response has been sent and its connection closed, it compares
        ``gc.get_count()`` with the application's thresholds (``gc.get_threshold()``)
        and, when a collection is due, runs the one CPython would have run inside the
        next request (the oldest generation whose count exceeds its threshold, a full
        collection only when CPython's long-lived ratio allows it; on 3.14.0 to 3.14.4,
        one increment of the incremental collector). ``N`` (an int >= 1): collect after
        every N requests. ``False`` or 0 (the default): off.

        A request that allocates more than that (35,000 on the incremental collector)
        is still collected inside the request: the safety net that keeps its memory
        bounded alike on every CPython. While a worker collects it does not accept; with
        ``--threads`` it stops accepting, lets its requests finish, collects, then
        accepts again. The master grants at most ``oob_concurrency`` workers at once,
        and spawns one first when the worker asking would be alone (``workers = 1``).
        See docs/out-of-band.md.
        """


class OobGcGeneration(Setting):
    name = "oob_gc_generation"
    section = SECTION
    cli = ["--oob-gc-generation"]
    meta = "INT"
    cli_parse = staticmethod(parse_int)
    validator = validate_oob_gc_generation
    default = None
    desc = """\
        The generation ``oob_gc`` collects: 0, 1 or 2.

        ``None`` (the default): what the collector's counters call for, as CPython
        would choose. ``2`` makes every out-of-band collection a full one.
        """


class OobConcurrency(Setting):
    name = "oob_concurrency"
    section = SECTION
    cli = ["--oob-concurrency"]
    meta = "INT"
    cli_parse = staticmethod(parse_int)
    validator = validate_oob_concurrency
    default = None
    desc = """\
        How many workers may be in out-of-band work (``oob_gc``, the work header) at once.

        A worker that wants costly out-of-band work (header work, ``oob_gc = N``, a
        collection that may be full) asks the master, which grants at most this many at
        once, the oldest ask first, and never every worker; the others keep serving until
        their turn. ``None`` (the default): a quarter of ``workers``, at least 1. When the
        worker asking is the only one that would serve meanwhile (``workers = 1``, or the
        others are being replaced or disabled), the master first spawns one more worker,
        grants once it serves, and lets it go 10 s after the last ask. See
        docs/out-of-band.md.
        """


class OobWorkHeader(Setting):
    name = "oob_work_header"
    section = SECTION
    cli = ["--oob-work-header"]
    meta = "STRING"
    validator = validate_oob_work_header
    default = "X-Smartspawn-OOB-Work"
    desc = """\
        The response header by which the application asks for out-of-band work.

        A response carrying it with the value ``true``, ``1`` or ``yes`` (any case)
        makes the worker run ``on_oob_work(worker)`` once the response has been sent,
        out of band as ``oob_gc`` collections are. The header (any case, any value,
        error responses included) is removed before the response reaches the client.
        ``None``: no header is looked for and responses pass unchanged.
        """


class OnOobWork(Setting):
    name = "on_oob_work"
    section = "Server Hooks"
    validator = validate_callable(1)
    type = callable

    def on_oob_work(worker: Worker) -> None:
        gc.collect()
    default = staticmethod(on_oob_work)
    desc = """\
        Called in a worker to run the out-of-band work a response asked for.

        The callable takes the Worker. The default runs a full ``gc.collect()``. It runs
        when no request is in flight in this worker; like a request, it is killed when it
        takes longer than ``timeout``.
        """


# -- memory-aware worker lifecycle (lifecycle.py) ---------------------------------------

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2,
              "mb": 1024 ** 2, "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3,
              "gib": 1024 ** 3}
MIN_WORKER_MEMORY = 1024 ** 2


def validate_memory_size(val):
    """-> bytes (int) or None. "512MB", "1.5GiB", "800M" or a number of bytes."""
    if val is None or val is False:
        return None
    if isinstance(val, bool):
        raise TypeError('must be a size such as "512MB" or a number of bytes')
    if isinstance(val, (int, float)):
        size = val
    elif isinstance(val, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", val)
        unit = match.group(2).lower() if match else None
        if unit not in SIZE_UNITS:
            raise ValueError('must be a size such as "512MB", "1.5GB" or "800MiB" '
                             '(K, M, G: powers of 1024)')
        size = float(match.group(1)) * SIZE_UNITS[unit]
    else:
        raise TypeError('must be a size such as "512MB" or a number of bytes')
    if not math.isfinite(size) or size < MIN_WORKER_MEMORY:
        raise ValueError("must be at least 1MB")
    return int(size)


class ShareOfLimit(int):
    """max_worker_memory given as a share of the memory cgroup's limit ("10%"): the bytes
    it came to, and from what (the master logs it at start)."""

    def __new__(cls, size, percent, memory):
        value = super().__new__(cls, size)
        value.percent, value.memory = percent, memory
        return value

    def __getnewargs__(self):  # copy and pickle
        return int(self), self.percent, self.memory

    def describe(self):
        return ("max_worker_memory = %g%% of the memory cgroup's limit (%s, %.1f MiB): "
                "%.1f MiB" % (self.percent, self.memory.path,
                              self.memory.limit_bytes / 1024 ** 2, self / 1024 ** 2))


def validate_worker_memory(val):
    """-> bytes (int) or None: a size (validate_memory_size) or a share of the limit of
    this process's memory cgroup ("10%"). The master validates its settings itself, at
    start and on HUP: the share is of the master's limit, as it is then."""
    if not (isinstance(val, str) and val.strip().endswith("%")):
        return validate_memory_size(val)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", val)
    percent = float(match.group(1)) if match else 0.0
    if not 0 < percent <= 100:
        raise ValueError('a share of the memory cgroup\'s limit must be a percentage '
                         'above 0 and at most 100, such as "10%"')
    try:
        memory = cgroup.memory_of(os.getpid())
    except OSError as exc:
        raise ValueError("a share of the memory cgroup's limit, which cannot be read: "
                         "%s" % exc) from None
    if memory is None or memory.limit_bytes is None:
        where = ("its memory cgroup %s has no limit" % memory.path if memory
                 else "it is in no memory cgroup")
        raise ValueError('a share of the memory cgroup\'s limit, and this server has none '
                         '(%s): give a size such as "512MB", or set a memory limit'
                         % where)
    size = int(memory.limit_bytes * percent / 100)
    if size < MIN_WORKER_MEMORY:
        raise ValueError("%s of the memory cgroup's limit (%d bytes) is below 1MB"
                         % (val.strip(), memory.limit_bytes))
    return ShareOfLimit(size, percent, memory)


class MemorySampleInterval(Setting):
    name = "memory_sample_interval"
    section = SECTION
    cli = ["--memory-sample-interval"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_positive
    default = 5.0
    desc = """\
        Seconds between two samples of the workers' private memory (USS).

        The master reads each worker's USS from the kernel (``/proc/PID/smaps_rollup``,
        through psutil) when ``refork_on_memory`` or ``max_worker_memory`` is on. It
        costs the master about a millisecond per worker and nothing on the request path.
        """


class ReforkOnMemory(Setting):
    name = "refork_on_memory"
    section = SECTION
    cli = ["--refork-on-memory"]
    action = "store_true"
    validator = validate_bool
    default = False
    desc = """\
        Refork when the workers have un-shared enough memory that a refork pays off.

        The master samples every worker's USS (``memory_sample_interval``). A
        generation's baseline is its workers' lowest mean USS and what they share then
        (mean RSS - USS). When the mean USS has grown above the baseline by more than
        ``refork_memory_growth`` times that shared size, three samples in a row, the
        oldest worker becomes the template and every worker is re-forked from it (as with
        ``fork_worker``, which it combines with: whichever fires first). Never within
        ``refork_min_interval`` seconds of the previous refork. Needs ``workers >= 2``.
        """


class ReforkMemoryGrowth(Setting):
    name = "refork_memory_growth"
    section = SECTION
    cli = ["--refork-memory-growth"]
    meta = "FLOAT"
    cli_parse = staticmethod(parse_number)
    validator = validate_positive
    default = 0.1
    desc = """\
        How much private memory a worker gains, as a fraction of the memory it shares,
        before ``refork_on_memory`` reforks.

        0.1 (the default): when the workers share 200 MB with their template, a refork
        happens once their mean USS has grown by 20 MB above their generation's baseline
        (its lowest mean USS; see ``refork_on_memory``).
        """


class ReforkMinInterval(Setting):
    name = "refork_min_interval"
    section = SECTION
    cli = ["--refork-min-interval"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_positive
    default = 30.0
    desc = """\
        Seconds that must pass after a refork (or the start) before ``refork_on_memory``
        may refork again.
        """


class MaxWorkerMemory(Setting):
    name = "max_worker_memory"
    section = SECTION
    cli = ["--max-worker-memory"]
    meta = "SIZE"
    validator = validate_worker_memory
    default = None
    desc = """\
        Replace a worker whose private memory (USS) stays above this size.

        ``"512MB"``, ``"1.5GB"``, ``"800MiB"`` (K, M and G are powers of 1024), a number
        of bytes, or a share of the server's memory cgroup limit: ``"10%"`` (a
        container's memory limit; the master reads it when it starts and on each HUP,
        and refuses to start when its cgroup has no limit). ``None`` (the default) is
        off. USS is what the worker alone holds:
        pages it shares with the preloader, the template or other workers do not count,
        so the limit does not punish sharing as an RSS limit would. A worker above the
        limit for three samples in a row (``memory_sample_interval``) is replaced: its
        replacement is forked and serving first, then it is stopped gracefully.
        """


class PreloaderIdleTimeout(Setting):
    name = "preloader_idle_timeout"
    section = SECTION
    cli = ["--preloader-idle-timeout"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_optional_seconds
    default = None
    desc = """\
        Seconds after which a preloader that has spawned nothing exits, to free its
        memory (Passenger's ``max_preloader_idle_time``).

        The next worker then comes from the template if one is alive (``fork_worker``),
        else from a preloader started on demand, which imports the application again.
        ``None`` (the default): the preloader stays.
        """


def parse_host_port(text):
    """"127.0.0.1:9187" -> ("127.0.0.1", 9187); "[::1]:9187" -> ("::1", 9187)."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('must be "host:port", such as "127.0.0.1:9187" ("0.0.0.0:9187" '
                         'for every interface, "[::1]:9187" for IPv6)')
    return host, int(port)


def validate_metrics_bind(val):
    if val is None:
        return None
    if not isinstance(val, str):
        raise TypeError('must be "host:port", such as "127.0.0.1:9187", or None')
    parse_host_port(val)
    # Found, not imported: the server imports it (master/metrics.py).
    if importlib.util.find_spec("prometheus_client") is None:
        raise ValueError("needs prometheus_client, which is not installed: "
                         "pip install gunicorn-smartspawn[metrics]")
    return val.strip()


class MetricsBind(Setting):
    name = "metrics_bind"
    section = SECTION
    cli = ["--metrics-bind"]
    meta = "ADDRESS"
    validator = validate_metrics_bind
    default = None
    desc = """\
        Serve ``/metrics`` (Prometheus) and ``/healthz`` from the master at this
        ``"host:port"``, such as ``"127.0.0.1:9187"``.

        ``None`` (the default) is off. Needs the ``metrics`` extra
        (``pip install gunicorn-smartspawn[metrics]``: prometheus_client). ``/metrics``
        has the memory (PSS and USS) of each kind of process, the workers by state,
        spawn latency, reforks, replacements and out-of-band GC time; ``/healthz`` answers
        200 while a worker serves, else 503 (docs/metrics.md). Read at start: a change
        takes effect on USR2, not HUP.
        """


# -- where a worker is stuck (worker/deadline.py, master/watchdog.py) ----------------------

def validate_non_negative(val):
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise TypeError("must be a number of seconds")
    if not math.isfinite(val) or val < 0:
        raise ValueError("must be a finite number of seconds >= 0")
    return float(val)


class SoftTimeout(Setting):
    name = "soft_timeout"
    section = SECTION
    cli = ["--soft-timeout"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_non_negative
    default = 0
    desc = """\
        Seconds after which a request still running is reported; 0 (the default) is off.

        The master logs one warning naming the worker and how long the request has run,
        and the worker writes the Python stack of each of its threads to the error log
        (faulthandler: even a worker stuck in C code writes it) and calls
        ``on_soft_timeout``. The request keeps running: ``timeout`` stays the hard limit,
        and a worker it kills writes its stacks before the kill too. Each request is
        reported once; ``smartspawn.extend_deadline(seconds)`` pushes its deadline
        (docs/operators.md). With the sync worker a value at or above ``timeout`` never
        fires (the worker is killed first): smartspawn warns at start.
        """


class MaxDeadlineExtension(Setting):
    name = "max_deadline_extension"
    section = SECTION
    cli = ["--max-deadline-extension"]
    meta = "SECONDS"
    cli_parse = staticmethod(parse_number)
    validator = validate_non_negative
    default = 300
    desc = """\
        The most seconds one call of ``smartspawn.extend_deadline(seconds)`` may give a
        request; a larger ask is cut to this, with a warning.

        300 (the default): five minutes, ten times gunicorn's default ``timeout``, and
        beyond the read timeout of the proxies usually in front (nginx's
        ``proxy_read_timeout`` and an AWS load balancer's idle timeout are 60 s), so that
        a request calling it by mistake, or in a loop that never ends, is still stopped
        within minutes. A request that keeps making progress (an export sending one chunk
        after another) may call it again: each call counts from its own time. 0:
        ``extend_deadline`` extends nothing.
        """


class OnSoftTimeout(Setting):
    name = "on_soft_timeout"
    section = "Server Hooks"
    validator = validate_callable(1)
    type = callable

    def on_soft_timeout(worker: Worker) -> None:
        pass
    default = staticmethod(on_soft_timeout)
    desc = """\
        Called in a worker when one of its requests has run longer than ``soft_timeout``.

        The callable takes the Worker. It runs in the worker's main thread, as a signal
        handler, right after the stacks were written, while the request is still
        running (with the sync worker: inside it). An exception it raises is logged and
        the worker goes on. A worker stuck in C code runs it once that code returns.
        """


def deadline_warnings(cfg):
    """soft_timeout at or above timeout never fires before the sync worker is killed."""
    if cfg.soft_timeout and cfg.timeout and cfg.soft_timeout >= cfg.timeout:
        return ["soft_timeout = %g is not below timeout = %g: with the sync worker, a "
                "request is killed before its soft timeout is reported"
                % (cfg.soft_timeout, cfg.timeout)]
    return []


# Every Setting subclass defined above is smartspawn's, in declaration order.
SMARTSPAWN_SETTINGS = tuple(s for s in KNOWN_SETTINGS if s.__module__ == __name__)
SMARTSPAWN_NAMES = tuple(s.name for s in SMARTSPAWN_SETTINGS)


class CliValue:
    """The argparse `type` of a smartspawn flag: its text parsed (`cli_parse`) and checked
    by the setting's validator, so that a bad value stops the parser with a message that
    names the setting and the value. An instance, not a function: gunicorn reads
    `setting.type`, which would bind a function as a method."""

    def __init__(self, setting_class):
        self.name = setting_class.name
        self.parse = getattr(setting_class, "cli_parse", str)
        self.validator = setting_class.validator
        self.__name__ = setting_class.name  # argparse names it in some messages

    def __call__(self, text):
        try:
            value = self.parse(text)
            self.validator(value)
        except (TypeError, ValueError, OverflowError, ConfigError) as exc:
            raise argparse.ArgumentTypeError("%s=%r: %s" % (self.name, text, exc)) from None
        return value


for _setting in SMARTSPAWN_SETTINGS:
    if _setting.cli and _setting.action is None:
        _setting.type = CliValue(_setting)
del _setting


def config_namespace(cfg):
    """The names the user's config module defined (file or ``python:module``)."""
    location = cfg.config or ""
    if location.startswith("python:"):
        module = sys.modules.get(location[len("python:"):])
    else:
        module = sys.modules.get("__config__")
    return vars(module) if module is not None else {}


def install_settings(cfg):
    """Make smartspawn's settings real in `cfg`; returns warnings about unknown names.

    Raises ConfigError naming the setting and the value when a value is invalid.
    """
    namespace = config_namespace(cfg)
    for setting_class in SMARTSPAWN_SETTINGS:
        name = setting_class.name
        if name in cfg.settings:
            continue  # gunicorn already parsed it (after a HUP, or a custom Application)
        setting = setting_class()
        if name in namespace:
            value = namespace[name]
            try:
                setting.set(value)
            except (TypeError, ValueError, OverflowError, ConfigError) as exc:
                raise ConfigError("Invalid value for smartspawn setting %s=%r: %s"
                                  % (name, value, exc)) from None
        cfg.settings[name] = setting
    return misspelled_names(namespace, cfg) + deadline_warnings(cfg)


def misspelled_names(namespace, cfg):
    warnings = []
    for name in namespace:
        if name.startswith("_") or name in cfg.settings:
            continue
        close = difflib.get_close_matches(name, SMARTSPAWN_NAMES, n=1, cutoff=0.8)
        if close or name.startswith("smartspawn_"):
            hint = " (did you mean %r?)" % close[0] if close else ""
            warnings.append("Unknown setting %r in the gunicorn config is ignored%s"
                            % (name, hint))
    return warnings
