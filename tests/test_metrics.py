"""smartspawn's statsd metrics, received on a real UDP socket."""
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
