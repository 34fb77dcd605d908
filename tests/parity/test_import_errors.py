"""Parity of import errors: plain gunicorn (`-k sync`) and smartspawn.

4. An app whose import raises an exception with a 100 000-character message with
   non-ASCII text (tests/apps/parity_sig_longerror.py; 105 KB, or 225 KB: more than a
   socket's send buffer): at start both exit 3, once, with the start of the message in
   the log, however much larger the preloader's BootFailed message is than the master's
   receive buffer.
5. The same broken code deployed with HUP: gunicorn's master halts (exit 3) and stops
   serving; smartspawn promises more (README, "Failures"): the running generation keeps
   serving, without a failed request, and the error is logged.

One worker each: with two, gunicorn 27 itself exits 1 or 3 at random (both workers exit 3,
and the second HaltServer is raised while the first one is being handled).
"""
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for

BROKEN = Path(__file__).parent.parent / "apps" / "parity_sig_longerror.py"
# The start of the exception's message, as the log shows it.
MESSAGE_START = {"mixed": "RuntimeError: LONG IMPORT ERROR " + ("é日本" + "." * 97) * 2,
                 "non-ascii": "RuntimeError: LONG IMPORT ERROR " + "é日本 " * 50}


class Load:
    """Sequential GET / from a thread, bounded in time: `ok`, `failures`."""

    def __init__(self, server, max_seconds=30.0):
        self.server, self.max_seconds = server, max_seconds
        self.ok, self.failures = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, _ = self.server.request("/", timeout=5.0)
            except OSError as exc:
                self.failures.append(repr(exc))
                time.sleep(0.01)  # a server that is gone refuses at once: do not spin
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append("HTTP %s" % status)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def exit_code(server, timeout=20.0):
    """The master's exit code, or None if it is still running after `timeout` seconds."""
    try:
        return server.proc.wait(timeout)
    except Exception:  # noqa: BLE001 -- subprocess.TimeoutExpired: a spawn loop, say
        return None


@pytest.mark.parametrize("shape", ["mixed", "non-ascii"])
def test_long_import_error_at_start_exits_3_once(run_both, shape):
    """The app's import raises an exception with a 100 000-character message with
    non-ASCII text ("mixed": 105 KB; "non-ascii": 225 KB, more than a socket's buffer).
    gunicorn: exit 3, the start of the message in the log, one import (no spawn loop).
    smartspawn: the same, although the preloader's BootFailed message is larger than the
    master's 4 KiB receive buffer."""
    def scenario(server):
        server.start(wait=False)
        code = exit_code(server)
        return {"exit": code, "message logged": MESSAGE_START[shape] in server.log(),
                "imports": len(server.lines("broken_imports.txt"))}  # more: a spawn loop

    plain, smart = run_both(scenario, app_file="parity_sig_longerror.py", workers=1,
                           env={"LONG_ERROR": shape})
    assert plain == {"exit": 3, "message logged": True, "imports": 1}
    assert smart == plain


def test_long_import_error_on_hup(run_both):
    """Good code serves under load; app.py is replaced by the long import error; HUP.
    gunicorn (its known behaviour, asserted here): the old workers are stopped at once,
    the new ones exit 3, the master halts with exit 3 and requests fail. smartspawn
    promises more (README, "Failures"): the running generation keeps serving, zero
    failed requests during and after the HUP, the error logged, a single failed import
    (no loop), the master up until TERM (exit 0)."""
    def scenario(server):
        server.start()
        with Load(server) as load:
            wait_for(lambda: load.ok >= 10, what="traffic before the HUP")
            (server.root / "app.py").write_text(BROKEN.read_text())
            server.signal(signal.SIGHUP)
            server.wait_log(re.escape(MESSAGE_START["mixed"]), timeout=15)
            after = load.ok
            wait_for(lambda: load.ok >= after + 50 or server.exited() is not None,
                     timeout=15, what="traffic after the HUP, or the master's exit")
        halted = server.exited()
        outcome = {"master": "halted with exit %s" % halted if halted is not None else "up",
                   "requests failed": bool(load.failures),
                   "imports of the broken code": len(server.lines("broken_imports.txt"))}
        if halted is None:
            outcome["serves"] = server.get_json("/")["version"]
            outcome["exit"] = server.stop(signal.SIGTERM)
        return outcome

    plain, smart = run_both(scenario, workers=1)
    assert plain == {"master": "halted with exit 3", "requests failed": True,
                     "imports of the broken code": 1}
    assert smart == {"master": "up", "requests failed": False,
                     "imports of the broken code": 1, "serves": "v1", "exit": 0}
