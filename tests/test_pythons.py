"""What differs between the CPython builds smartspawn runs on (docs/pythons.md).

The collector's differences are tested where they act (test_oob.py, on 3.14.4 in CI), and
fork-with-threads where it is reported (test_forksafety.py); here, the build smartspawn
does not smart-spawn on.
"""
import signal
import sysconfig

import pytest

from conftest import wait_for

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
FALLBACK = ("smartspawn: falling back to direct spawning: this CPython is a free-threaded "
            "build (Py_GIL_DISABLED), on which smart spawning is not supported")


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded CPython "
                    "(scripts/test-on 3.14.7t tests/test_pythons.py)")
def test_a_free_threaded_build_serves_by_direct_spawning_with_one_warning(make_server):
    server = make_server(workers=2).start()
    assert server.log().count(FALLBACK) == 1, server.log()
    assert server.preloader_pids() == []
    first = server.worker_pids()
    assert len(first) == 2
    assert server.get_ok()
    # gunicorn's own HUP: new workers, each importing the app.
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids()) == 2 and not set(server.worker_pids()) & set(first),
             timeout=20, what="the workers to be replaced after HUP")
    assert server.get_ok()
    assert server.log().count(FALLBACK) == 1, server.log()


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded CPython")
def test_a_free_threaded_build_turns_oob_gc_off_with_one_warning(make_server):
    server = make_server(app_file="oob.py", workers=2, config="oob_gc = True\n").start()
    off = "smartspawn: oob_gc is off: not supported on a free-threaded CPython build"
    assert server.log().count(off) == 1, server.log()
    server.get_json("/garbage?3000")
    assert server.get_json("/gc")["between"] == []
    assert "Out-of-band gc" not in server.log()


@pytest.mark.skipif(FREE_THREADED, reason="a default (GIL) build smart-spawns")
def test_a_default_build_smart_spawns(make_server):
    server = make_server(workers=2).start()
    assert "falling back" not in server.log()
    server.preloader_pid()  # exactly one (a process just forked from it has its title a moment)
