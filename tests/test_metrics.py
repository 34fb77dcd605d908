"""smartspawn's statsd metrics, received on a real UDP socket."""
import concurrent.futures
import signal
import socket
import time

import pytest


@pytest.fixture
def statsd():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def receive(sock, names, timeout=15.0):
    """Datagram lines until every name in `names` was seen (bounded in time)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not all(any(n in line for line in seen)
                                                  for n in names):
        try:
            seen += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            pass
    return seen


def test_spawn_latency_refork_count_and_pss_total_reach_statsd(make_server, statsd):
    port = statsd.getsockname()[1]
    server = make_server(workers=2, config="fork_worker = True\n",
                         args=["--statsd-host", "127.0.0.1:%d" % port]).start()
    server.signal(signal.SIGURG)
    names = ["smartspawn.spawn_latency:", "smartspawn.reforks:1|c",
             "smartspawn.pss_total_mib:"]
    lines = receive(statsd, names)
    for name in names:
        assert any(name in line for line in lines), (name, lines)
    # gunicorn's own statsd socket is shared by design: no fork-safety warning for it.
    assert "WARNING] fork safety" not in server.log()
    latency = [line for line in lines if line.startswith("smartspawn.spawn_latency:")]
    assert all(line.endswith("|h") and float(line.split(":")[1].split("|")[0]) > 0
               for line in latency)


def test_lifecycle_figures_reach_statsd(make_server, statsd):
    port = statsd.getsockname()[1]
    server = make_server("lifecycle.py", workers=2, config=(
        'max_worker_memory = "30MB"\nmemory_sample_interval = 0.2\n'),
        args=["--statsd-host", "127.0.0.1:%d" % port, "--max-requests", "50"]).start()
    names = ["smartspawn.replaced_max_requests:1|c", "smartspawn.worker_uss_mean_mib:",
             "smartspawn.replaced_max_worker_memory:1|c"]
    # Read while the requests run: their own metrics would overflow the socket's buffer.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        received = pool.submit(receive, statsd, names, 60.0)
        server.request("/leak?40960")  # one worker holds 40 MiB more than it shares
        server.wait_log(r"stayed above max_worker_memory")
        for _ in range(150):
            server.request("/")
        lines = received.result()
    for name in names:
        assert any(name in line for line in lines), (name, lines)
