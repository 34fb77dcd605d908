"""systemd's Type=notify, against a real server: a datagram socket stands in for systemd
($NOTIFY_SOCKET) and records what the master says, and when."""
import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import wait_for

# The master's first worker writes when it booted (after the app's import and the hooks).
BOOT_HOOK = """
import os, time
def post_worker_init(worker):
    with open(os.path.join(os.environ["TEST_DIR"], "booted"), "a") as f:
        f.write("%f\\n" % time.time())
"""


class NotifyListener:
    """What systemd would receive on $NOTIFY_SOCKET: [(time.time(), message)]."""

    def __init__(self):
        self.address = "@smartspawn-test-%d-%d" % (os.getpid(), time.monotonic_ns())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.messages = []
        self.closed = False
        self.thread = threading.Thread(target=self.receive, daemon=True)
        self.thread.start()

    def receive(self):
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.time(), data.decode()))

    def wait(self, field, after=0, timeout=20.0):
        """The index, time and text of the first message from index `after` on that has
        the line `field` (as "READY=1")."""
        def found():
            for index, (at, text) in enumerate(self.messages[after:], after):
                if field in text.split("\n"):
                    return index, at, text
            return None
        return wait_for(found, timeout, what="%r from the master: %r"
                        % (field, self.messages[after:]))

    def statuses(self, after=0):
        return [line[len("STATUS="):] for _, text in self.messages[after:]
                for line in text.split("\n") if line.startswith("STATUS=")]

    def close(self):
        self.closed = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener():
    listener = NotifyListener()
    yield listener
    listener.close()


def times(server, name):
    return [float(line) for line in server.lines(name)]


def start_listening(server):
    """Start `server` and return once it listens (its port known), not once it serves."""
    server.start(wait=False)
    server.port = int(server.wait_log(r"Listening at: http://127\.0\.0\.1:(\d+)").group(1))


def test_ready_when_a_worker_serves_reloading_around_a_hup_status_and_stopping(
        make_server, listener):
    server = make_server(app_file="systemd_app.py", workers=2,
                         config=BOOT_HOOK + "fork_worker = True\n",
                         env={"NOTIFY_SOCKET": listener.address, "IMPORT_SECONDS": "1"})
    start_listening(server)
    index, ready_at, text = listener.wait("READY=1")
    # gunicorn's own READY (as its master boots) would come a second before this.
    assert "Gunicorn arbiter booted" not in str(listener.messages)
    assert times(server, "imported") and min(times(server, "booted")) <= ready_at, (
        ready_at, server.lines("imported"), server.lines("booted"))
    # A request made when systemd is told is answered at once: a worker accepts (told a
    # second early, it would wait for the import).
    assert server.request(timeout=1.0)[0] == 200
    assert re.search(r"^STATUS=Generation 1, workers serving: [12] \(target 2\)$", text,
                     re.M), text
    server.wait_ready()

    # HUP: RELOADING=1 (with the monotonic clock systemd 253 compares), then READY=1
    # once the new generation's two workers serve.
    server.signal(signal.SIGHUP)
    index, _, text = listener.wait("RELOADING=1", after=index + 1)
    usec = int(re.search(r"^MONOTONIC_USEC=(\d+)$", text, re.M).group(1))
    assert 0 <= time.monotonic() * 1e6 - usec < 20e6, (usec, time.monotonic())
    index, _, text = listener.wait("READY=1", after=index + 1)
    titles = [title for _, title in server.children()]
    assert sum("worker [app:app] gen=2" in title for title in titles) >= 2, titles
    assert "STATUS=Generation 2, workers serving:" in text, text

    # A refork's end updates the STATUS.
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 3 \(URG\) done", timeout=20)
    wait_for(lambda: any(re.search(r"^Generation 3, .*; last refork: to generation 3 "
                                   r"\(URG\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", status)
                         for status in listener.statuses(index + 1)),
             what="the refork in a STATUS: %r" % listener.statuses(index + 1))

    # A HUP whose app fails to import: READY=1 again, and the STATUS says why.
    (server.root / "broken").write_text("")
    server.signal(signal.SIGHUP)
    index, _, _ = listener.wait("RELOADING=1", after=index + 1)
    index, _, text = listener.wait("READY=1", after=index + 1)
    assert re.search(r"^STATUS=Generation 3, .*; the last reload failed: the preloader "
                     r"exited before it loaded the app.*\(generation 3 kept serving\)$",
                     text, re.M), text
    assert server.get_ok()

    assert server.stop() == 0
    _, _, text = listener.wait("STOPPING=1", after=index + 1)
    assert listener.messages[-1][1] == text  # nothing after it


def test_plain_preload_and_direct_spawning_keep_gunicorns_ready(make_server, listener):
    """gunicorn says READY=1 as its master boots: after the import with --preload (the
    master imports), before it with smartspawn's spawn_method = "direct" (each worker
    imports), as plain gunicorn without --preload. Neither says RELOADING=1 on HUP."""
    plain = make_server(app_file="systemd_app.py", workers=1, worker_class="sync",
                        args=("--preload",),
                        env={"NOTIFY_SOCKET": listener.address, "IMPORT_SECONDS": "1"})
    start_listening(plain)
    _, ready_at, text = listener.wait("READY=1")
    assert text == "READY=1\nSTATUS=Gunicorn arbiter booted"
    assert times(plain, "imported")[0] <= ready_at
    plain.wait_ready()
    plain.stop()

    after = len(listener.messages)
    direct = make_server(app_file="systemd_app.py", workers=1,
                         config='spawn_method = "direct"\n',
                         env={"NOTIFY_SOCKET": listener.address, "IMPORT_SECONDS": "1"})
    start_listening(direct)
    _, ready_at, text = listener.wait("READY=1", after=after)
    assert text == "READY=1\nSTATUS=Gunicorn arbiter booted"
    direct.wait_ready()
    assert ready_at < times(direct, "imported")[0]
    direct.signal(signal.SIGHUP)
    wait_for(lambda: direct.log().count("Booting worker with pid") >= 2,
             what="the HUP's worker\n" + direct.log())
    direct.stop()
    assert [text for _, text in listener.messages[after:]] == [
        "READY=1\nSTATUS=Gunicorn arbiter booted"]
