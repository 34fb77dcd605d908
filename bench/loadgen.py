"""Load generators: wrk when it is installed, else a bounded Python client.

Both send GET requests to one endpoint of a server on 127.0.0.1 for a fixed time, with
a fixed number of connections, and return the same figures:
{"client", "requests", "rps", "p50", "p99", "p999", "max" (ms), "errors"}.
`errors` counts failed requests: non-2xx answers, connect/read/write errors, timeouts.

A path ending in "{id}" asks for a random id in 1..ids each time (seeded, reproducible).

- wrk (one thread, C connections, keep-alive as the server allows; the sync worker closes
  each connection). Percentiles come from a Lua `done` hook. wrk 4.1 corrects its
  latency histogram for coordinated omission (a response k times slower than the mean
  interval adds k synthetic samples): its tail percentiles describe a client sending at a
  constant rate, and are higher than per-request ones whenever the server stalls.
- PythonLoad: C client processes (no shared GIL), one request per connection, back to back,
  until stopped or their deadline; every request is kept as (start, end, ok) on
  CLOCK_MONOTONIC, so a window of time can be cut out of a run (events.py).
  With `rate` (requests/s in all) the clients are paced instead (open loop): each sends
  on a fixed schedule whatever the server does, as independent users would, and a
  request's start is the time it was due, so time spent behind a slow answer counts
  (no coordinated omission). Paced load leaves the CPU the headroom a production server
  has; back-to-back load saturates it.
"""
import multiprocessing
import random
import re
import shutil
import socket
import subprocess
import time

from bench.server import BenchError

WRK_SCRIPT = """
local ids = %(ids)d
local prefix = "%(prefix)s"
math.randomseed(%(seed)d)
request = function()
  if ids > 0 then
    return wrk.format(nil, prefix .. math.random(1, ids))
  end
  return wrk.format(nil, prefix)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""
RESULT = re.compile(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", re.M)


def have_wrk():
    return shutil.which("wrk") is not None


def split_path(path):
    """"/product/{id}" -> ("/product/", True); "/" -> ("/", False)."""
    return (path[:-len("{id}")], True) if path.endswith("{id}") else (path, False)


def run_wrk(port, path, ids, connections, seconds, workdir, headers=()):
    """wrk's run; `headers`: extra request headers ("Connection: close", ...)."""
    prefix, random_ids = split_path(path)
    script = workdir / "load.lua"
    script.write_text(WRK_SCRIPT % {"ids": ids if random_ids else 0, "prefix": prefix,
                                    "seed": random.randrange(1 << 30)})
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
           *(arg for header in headers for arg in ("-H", header)),
           "-s", str(script), "http://127.0.0.1:%d%s" % (port, prefix)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    match = RESULT.search(out.stdout)
    if out.returncode or not match:
        raise BenchError("wrk failed (%s):\n%s%s" % (out.returncode, out.stdout, out.stderr))
    requests, duration_us, p50, p99, p999, worst, io_errors, status_errors = \
        map(int, match.groups())
    return {"client": "wrk", "requests": requests, "rps": requests / (duration_us / 1e6),
            "p50": p50 / 1e3, "p99": p99 / 1e3, "p999": p999 / 1e3, "max": worst / 1e3,
            "errors": io_errors + status_errors}


def exchange(port, request):
    """Send `request` on a new connection; -> the answer, read to EOF (sync workers close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def client_loop(port, path, ids, seed, deadline, stop, pipe, rate=0.0):
    """One connection's worth of load, in its own process: request after request, or one
    every 1/rate s (then `started` is when it was due: a late one counts its wait)."""
    prefix, random_ids = split_path(path)
    rng = random.Random(seed)
    samples = []
    due = time.monotonic() + (rng.random() / rate if rate else 0.0)  # clients out of step
    while not stop.is_set():
        if not rate:
            due = time.monotonic()
        if due >= deadline:
            break
        target = prefix + str(rng.randint(1, ids)) if random_ids else prefix
        request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % target).encode()
        started = due
        if rate:
            time.sleep(max(0.0, due - time.monotonic()))
            due += 1.0 / rate
        ok = False
        try:
            data = exchange(port, request)
            ok = data.startswith(b"HTTP/1.1 2") or data.startswith(b"HTTP/1.0 2")
        except OSError:
            pass
        samples.append((started, time.monotonic(), ok))
        if not ok:
            time.sleep(0.001)  # a refused connection returns at once: do not spin
    pipe.send(samples)
    pipe.close()


class PythonLoad:
    """`connections` client processes, started by start(), stopped by stop(); paced at
    `rate` requests/s in all if given."""

    def __init__(self, port, path, ids=0, connections=2, max_seconds=60.0, rate=0.0):
        self.args = (port, path, ids)
        self.connections, self.max_seconds = connections, max_seconds
        self.rate = rate / connections
        self.context = multiprocessing.get_context("fork")
        self.stop_event = self.context.Event()
        self.clients = []

    def start(self):
        deadline = time.monotonic() + self.max_seconds
        for n in range(self.connections):
            receiver, sender = self.context.Pipe(duplex=False)
            process = self.context.Process(target=client_loop, args=(
                *self.args, random.randrange(1 << 30) + n, deadline, self.stop_event, sender,
                self.rate))
            process.start()
            sender.close()
            self.clients.append((process, receiver))
        return self

    def stop(self, early=True):
        """-> every request of every client: [(start, end, ok)], sorted by start. Not
        `early`: the clients first finish what is due before their deadline."""
        if early:
            self.stop_event.set()
        samples = []
        try:
            for _, receiver in self.clients:
                if not receiver.poll(30):
                    raise BenchError("a load client process did not report in 30 s")
                samples += receiver.recv()
        finally:
            for process, receiver in self.clients:
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join(5)
                receiver.close()
        return sorted(samples)


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def summarize(samples, start=None, end=None):
    """Figures of the requests that started in [start, end) (default: all of them)."""
    chosen = [s for s in samples if (start is None or s[0] >= start) and
              (end is None or s[0] < end)]
    latencies = sorted((e - s) * 1e3 for s, e, ok in chosen if ok)
    if not latencies:
        raise BenchError("no successful request in the window (%d failed)" % len(chosen))
    span = (end or max(e for _, e, _ in chosen)) - (start or chosen[0][0])
    return {"client": "python", "requests": len(latencies), "rps": len(latencies) / span,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "p999": percentile(latencies, 99.9), "max": latencies[-1],
            "errors": sum(not ok for _, _, ok in chosen)}


def run_python(port, path, ids, connections, seconds, rate=0.0):
    load = PythonLoad(port, path, ids, connections, max_seconds=seconds, rate=rate).start()
    started = time.monotonic()
    time.sleep(seconds)
    return summarize(load.stop(), started, started + seconds)


def run(port, path, ids, connections, seconds, workdir):
    """One bounded run against `path`: wrk if installed, else the Python client."""
    if have_wrk():
        return run_wrk(port, path, ids, connections, seconds, workdir)
    return run_python(port, path, ids, connections, seconds)
