"""/metrics (Prometheus) and /healthz, served by the master at `metrics_bind`.

What they show is the master's state as it last published it for `smartspawn status`
(snapshot.state_file, at most a second old): one snapshot, so a scrape and `smartspawn
status` agree. The memory of each process is read from the kernel at each scrape, as
`smartspawn status` reads it.

The server runs in a thread of the master, not in its loop: reading the memory of many
processes (smaps) takes milliseconds each, and a slow client must not hold up the
arbiter. The master never forks with that thread running: its forks stop it first
(`stopped()`, SmartArbiter.threads_stopped), and the at-fork handlers stop it for any
other fork (gunicorn's dirty arbiter or USR2, a hook's). The listening socket stays open
meanwhile: a scrape that arrives waits in the backlog.

Imported only when `metrics_bind` is set: prometheus_client is an optional extra.
"""
import contextlib
import os
import select
import socket
import socketserver
import threading
from wsgiref import simple_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
)

from gunicorn_smartspawn.shared import cgroup
from gunicorn_smartspawn.shared.config import parse_host_port
from gunicorn_smartspawn.shared.state import process_rows

ROLES = ("master", "preloader", "template", "standby", "worker")
WORKER_STATES = ("booting", "serving", "outgoing", "stopping", "candidate")
ACCEPTING = ("serving", "outgoing")  # an outgoing worker serves until its replacement does
# A client gets this long per read or write (seconds); a fork of the master waits for
# the request in hand, so a slow client must not hold the thread for long.
CLIENT_TIMEOUT = 2.0
# How often a master started by USR2 tries to bind while the old master holds the port.
REBIND_INTERVAL = 1.0


class SmartspawnCollector:
    """The families of one scrape, from the master's published snapshot."""

    def __init__(self, published):
        self.published = published  # () -> the state file's content, or None

    def collect(self):
        content = self.published()
        if content is None:
            return  # the master has not published yet: nothing to say
        yield from memory_families(process_rows(content))
        yield from server_families(content)
        yield from cgroup_families(os.getpid())


def memory_families(rows):
    pss = GaugeMetricFamily("smartspawn_memory_pss_bytes", "Proportional set size (shared "
                            "pages divided among their sharers) of the processes of a role",
                            labels=["role"])
    uss = GaugeMetricFamily("smartspawn_memory_uss_bytes", "Unique set size (what the "
                            "processes of a role alone hold)", labels=["role"])
    count = GaugeMetricFamily("smartspawn_processes", "Processes by role", labels=["role"])
    for role in ROLES:
        mine = [row for row in rows if role_of(row) == role]
        pss.add_metric([role], sum(row["pss"] for row in mine))
        uss.add_metric([role], sum(row["uss"] for row in mine))
        count.add_metric([role], len(mine))
    yield pss
    yield uss
    yield count
    yield GaugeMetricFamily("smartspawn_server_memory_pss_bytes", "Total PSS of the "
                            "server's processes: its real memory cost",
                            value=sum(row["pss"] for row in rows))
    yield GaugeMetricFamily("smartspawn_server_memory_uss_bytes", "Total USS of the "
                            "server's processes", value=sum(row["uss"] for row in rows))


def cgroup_families(pid):
    """The memory cgroup the server runs in (a container's): its usage and, when it has
    one, its limit; nothing when the master is in no memory cgroup."""
    try:
        memory = cgroup.memory_of(pid)
    except OSError:
        return
    if memory is None:
        return
    yield GaugeMetricFamily("smartspawn_cgroup_memory_usage_bytes", "The memory cgroup's "
                            "usage (v2 memory.current, v1 memory.usage_in_bytes; page cache "
                            "included)", value=memory.usage_bytes)
    if memory.limit_bytes is not None:
        yield GaugeMetricFamily("smartspawn_cgroup_memory_limit_bytes", "The memory "
                                "cgroup's limit (the lowest on the way up the hierarchy)",
                                value=memory.limit_bytes)


def role_of(row):
    return row["role"].split(" ")[0]  # "worker (outgoing)", "template (booting)"


def server_families(content):
    workers = GaugeMetricFamily("smartspawn_workers", "Workers by state", labels=["state"])
    states = [row["state"] for row in content["processes"] if "state" in row]
    for state in WORKER_STATES:
        workers.add_metric([state], states.count(state))
    yield workers
    yield GaugeMetricFamily("smartspawn_workers_target", "The workers setting (TTIN/TTOU "
                            "included)", value=content["workers_target"])
    yield GaugeMetricFamily("smartspawn_generation", "The generation serving (a HUP or a "
                            "refork starts the next)", value=content["generation"])
    yield CounterMetricFamily("smartspawn_reforks", "Reforks done (fork_worker, URG, "
                              "refork_on_memory)", value=content["reforks"])
    lifecycle = content["lifecycle"]
    replaced = CounterMetricFamily("smartspawn_worker_replacements", "Workers replaced "
                                   "(spawned first, then stopped), by reason",
                                   labels=["reason"])
    for reason in ("max_requests", "max_worker_memory"):
        replaced.add_metric([reason], lifecycle["replaced_" + reason])
    yield replaced
    yield from oob_families(content)
    yield latency_family(content["spawn_latency"])


def oob_families(content):
    """Out-of-band GC: the live workers' counters plus those of the workers that exited."""
    totals = dict(content["departed_workers"])
    for row in content["processes"]:
        for name in ("oob_collections", "oob_microseconds"):
            totals[name] += row.get(name, 0)
    yield CounterMetricFamily("smartspawn_oob_gc_collections", "Out-of-band garbage "
                              "collections (oob_gc), every worker's",
                              value=totals["oob_collections"])
    yield CounterMetricFamily("smartspawn_oob_gc_seconds", "Time the workers spent in "
                              "out-of-band garbage collections",
                              value=totals["oob_microseconds"] / 1e6)
    oob = GaugeMetricFamily("smartspawn_oob_workers", "Workers waiting for the master's "
                            "grant of out-of-band work, and working", labels=["state"])
    rows = [row for row in content["processes"] if "oob" in row]
    for state in ("waiting", "working"):
        oob.add_metric([state], sum(row["oob"] == state for row in rows))
    yield oob
    yield CounterMetricFamily("smartspawn_oob_grants", "Out-of-band work granted by the "
                              "master (oob_concurrency)", value=content["oob_grants"])
    yield GaugeMetricFamily("smartspawn_disabled_workers", "Workers out of rotation "
                            "(worker disable)", value=sum(bool(row.get("disabled"))
                                                          for row in rows))


def latency_family(latency):
    cumulative, buckets = 0, []
    bounds = [repr(bound) for bound in latency["buckets"]] + ["+Inf"]
    for bound, count in zip(bounds, latency["counts"], strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily("smartspawn_spawn_latency_seconds", "From the master's "
                                 "spawn request to the new worker's check-in (smart "
                                 "spawning: its standby took the request)",
                                 buckets=buckets, sum_value=latency["sum"])


def health(content, stopping):
    """(serving, why): serving while at least one worker has booted and accepts.
    `content`: the state file's content (None before the first)."""
    if stopping:
        return False, "stopping"
    if content is None:
        return False, "starting: no worker serves yet"
    states = [row["state"] for row in content["processes"] if "state" in row]
    serving = sum(states.count(state) for state in ACCEPTING)
    if serving:
        return True, "ok: %d workers serve (generation %d)" % (serving,
                                                               content["generation"])
    if any(row["role"] == "preloader (booting)" for row in content["processes"]):
        return False, "starting: the preloader is loading the app"
    return False, "no worker serves (%d booting)" % states.count("booting")


def make_app(server):
    registry = CollectorRegistry()
    registry.register(SmartspawnCollector(server.published))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The app's own metrics (prometheus_client's multiprocess mode), read from the
        # workers' files: the master never imports the app (docs/metrics.md).
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        try:
            if path == "/metrics":
                return metrics(environ, start_response)
        except Exception:
            server.log.exception("metrics_bind: /metrics failed")
            return respond(start_response, "500 Internal Server Error", "scrape failed\n")
        if path == "/healthz":
            serving, why = health(server.published(), server.stopping)
            return respond(start_response, "200 OK" if serving
                           else "503 Service Unavailable", why + "\n")
        return respond(start_response, "404 Not Found", "/metrics or /healthz\n")
    return app


def respond(start_response, status, text):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Handler(simple_server.WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def log_message(self, format, *args):
        pass  # no line per scrape


class MetricsServer:
    """The HTTP server of `metrics_bind`, one request at a time, in one thread."""

    def __init__(self, address, log, published, retry=False):
        """Binds `address` now (OSError if it cannot), or with `retry` (a master started
        by USR2, while the old master holds the port) from its thread, until it can.
        `published`: () -> the master's last snapshot (the state file's content)."""
        self.address, self.log, self.published = address, log, published
        self.stopping = False  # the master is shutting down: /healthz says so
        self.app = make_app(self)
        self.httpd = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = None
        self._running = False
        self._stopped_for_fork = False
        if not retry:
            self.httpd = self.bind()

    def bind(self):
        host, port = parse_host_port(self.address)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("HTTPServer", (HTTPServer,), {"address_family": family})
        httpd = server_class((host, port), Handler)
        httpd.set_app(self.app)
        httpd.log = self.log
        httpd.socket.setblocking(False)  # a client gone before accept() blocks nothing
        httpd.timeout = 0
        self.log.info("Serving /metrics and /healthz at http://%s/ (metrics_bind)",
                      self.address)
        return httpd

    # -- the thread --------------------------------------------------------------------

    def start(self):
        self._running = True
        self._thread = threading.Thread(target=self.serve, name="smartspawn-metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the thread (it ends the request in hand first); returns whether it ran."""
        if not self._running:
            return False
        self._running = False
        with contextlib.suppress(BlockingIOError):  # full: awake already
            os.write(self._wake_w, b"\0")
        self._thread.join(CLIENT_TIMEOUT * 3)
        if self._thread.is_alive():
            self.log.warning("metrics_bind: the metrics thread did not stop")
        self._thread = None
        return True

    def serve(self):
        while self._running:
            if self.httpd is None:
                try:
                    self.httpd = self.bind()
                except OSError as exc:
                    self.log.debug("metrics_bind %s: %s; trying again", self.address, exc)
                    self.wait([], REBIND_INTERVAL)
                continue
            if self.wait([self.httpd.socket.fileno()], None) and self._running:
                self.httpd.handle_request()

    def wait(self, fds, timeout):
        """Wait for one of `fds` or a stop() (seconds; None: no limit); returns the ready
        ones of `fds`. poll, not select: the master may hold more than 1024 fds."""
        poller = select.poll()
        for fd in (self._wake_r, *fds):
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
        return [fd for fd in fds if fd in ready]

    # -- around forks and at the end ---------------------------------------------------

    @contextlib.contextmanager
    def stopped(self):
        """Within: the thread is stopped (a fork of the master); it starts again after,
        in the master only (the child leaves the block too)."""
        running = self.stop()
        pid = os.getpid()
        try:
            yield
        finally:
            if running and os.getpid() == pid:
                self.start()

    def before_fork(self):
        """At-fork: a fork smartspawn did not wrap in stopped()."""
        self._stopped_for_fork = self.stop()

    def after_fork_in_parent(self):
        if self._stopped_for_fork:
            self._stopped_for_fork = False
            self.start()

    def close_in_child(self):
        """In a process just forked from the master: close the master's socket and pipe."""
        self._running = False
        self.close_fds()

    def close(self):
        """At the master's stop (twice on INT and QUIT: gunicorn's handler, then halt)."""
        self.stop()
        self.close_fds()

    def close_fds(self):
        if self.httpd is not None:
            self.httpd.socket.close()
            self.httpd = None
        if self._wake_r is not None:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = None


class HTTPServer(simple_server.WSGIServer):
    allow_reuse_address = True
    log = None  # gunicorn's logger (bind)

    def handle_error(self, request, client_address):
        # A client that timed out or hung up: not socketserver's traceback on stderr.
        self.log.debug("metrics_bind: request from %s failed", client_address, exc_info=True)

    def server_bind(self):
        # HTTPServer's own looks the host up in DNS (getfqdn): not at every start.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()
