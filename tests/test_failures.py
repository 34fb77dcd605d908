"""Bad settings, apps that fail to load, reloads that fail: clear errors, nothing lost."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import APPS, LoadLoop, wait_for


@pytest.mark.parametrize("line, named", [
    ('spawn_method = "bogus"', "spawn_method='bogus'"),
    ("spawn_method = 3", "spawn_method=3"),
    ("gc_freeze = 1", "gc_freeze=1"),
    ('gc_freeze = "immortl"', "gc_freeze='immortl'"),
    ('preloader_boot_timeout = "10"', "preloader_boot_timeout='10'"),
    ("preloader_boot_timeout = -1", "preloader_boot_timeout=-1"),
    ('preloader_boot_timeout = float("nan")', "preloader_boot_timeout=nan"),
    ("on_preload = lambda: None", "on_preload="),
    ("oob_gc = -1", "oob_gc=-1"),
    ('oob_gc = "yes"', "oob_gc='yes'"),
    ("oob_gc = 2.5", "oob_gc=2.5"),
    ("oob_gc_generation = 3", "oob_gc_generation=3"),
    ("oob_gc_generation = True", "oob_gc_generation=True"),
    ('oob_work_header = "X Bad: header"', "oob_work_header='X Bad: header'"),
    ("oob_work_header = 1", "oob_work_header=1"),
    ('oob_work_header = "X-Oob\\n"', "oob_work_header='X-Oob\\n'"),
    ('oob_work_header = "Content-Length"', "oob_work_header='Content-Length'"),
    ("on_oob_work = lambda: None", "on_oob_work="),
])
def test_bad_setting_stops_startup_naming_setting_and_value(make_server, line, named):
    server = make_server(config=line + "\n").start(wait=False)
    assert server.wait_exit() == 1
    log = server.log()
    assert "Invalid value for smartspawn setting " + named in log
    assert "Listening at" not in log
    assert not server.pidfile.exists()


def test_misspelled_setting_is_warned_about(make_server):
    server = make_server(config='spawn_methd = "direct"\nsmartspawn_thing = 1\n').start()
    server.wait_log(r"Unknown setting 'spawn_methd' .* \(did you mean 'spawn_method'\?\)")
    server.wait_log(r"Unknown setting 'smartspawn_thing'")
    assert server.preloader_pids()  # the misspelled value was not applied


def test_import_exception_exits_3_with_traceback_and_no_respawn(make_server):
    server = make_server(app_file="broken.py").start(wait=False)
    assert server.wait_exit() == 3
    log = server.log()
    assert "Traceback" in log and "RuntimeError: this app cannot be imported" in log
    assert log.count("Started preloader") == 1
    assert "Worker failed to boot." in log
    assert not server.pidfile.exists()


def test_missing_module_exits_3(make_server):
    server = make_server(app="nosuchmodule:app").start(wait=False)
    assert server.wait_exit() == 3
    assert "No module named 'nosuchmodule'" in server.log()


def test_missing_attribute_exits_4_app_load_error(make_server):
    server = make_server(app="app:nosuchattr").start(wait=False)
    assert server.wait_exit() == 4
    log = server.log()
    assert "Failed to find attribute 'nosuchattr'" in log
    assert "App failed to load." in log


def test_preloader_boot_timeout_stops_startup(make_server):
    server = make_server(app_file="slow_import.py", config="preloader_boot_timeout = 1\n",
                         env={"IMPORT_SECONDS": "30"}).start(wait=False)
    assert server.wait_exit(timeout=15) == 3
    log = server.log()
    assert "did not load the app within 1.0s (preloader_boot_timeout)" in log
    assert server.alive(server.seen_pids) == []


def test_hup_with_broken_code_keeps_the_old_generation_serving(make_server):
    server = make_server(workers=2).start()
    workers = server.worker_pids()
    app_py = server.root / "app.py"
    good_code = app_py.read_text()
    with LoadLoop(server) as load:
        app_py.write_text("raise RuntimeError('broken deploy')\n")
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload failed: .*gen=2.* exited before it loaded the app"
                        r".*generation 1 keeps serving")
    assert load.failures == []
    assert server.worker_pids() == workers
    assert {server.get_json()["version"] for _ in range(5)} == {"v1"}
    # The fix is deployed: the next HUP works.
    app_py.write_text(good_code.replace('VERSION = "v1"', 'VERSION = "v3"'))
    server.signal(signal.SIGHUP)
    wait_for(lambda: {server.get_json()["version"] for _ in range(8)} == {"v3"},
             timeout=20, what="v3 to be served")


def test_hup_with_bad_config_keeps_running(make_server):
    server = make_server(workers=2).start()
    preloader = server.preloader_pid()
    (server.root / "gunicorn.conf.py").write_text('spawn_method = "bogus"\n')
    server.signal(signal.SIGHUP)
    server.wait_log(r"Reload failed: the configuration did not load")
    assert server.exited() is None
    assert server.preloader_pid() == preloader
    assert server.get_ok()


def test_workers_that_exit_before_they_serve_are_respawned_ever_more_slowly(make_server):
    """A worker that exits before it serves (here: in post_fork, with a code that is no
    boot error) is respawned, but after five in a row the master waits between spawns,
    longer each time: no spawn loop (plain gunicorn respawns such workers at once)."""
    server = make_server(config="import os\n"
                                "def post_fork(server, worker):\n"
                                "    os._exit(1)\n").start(wait=False)
    server.wait_log(r"5 workers in a row exited before they served; the next spawn waits 1s")
    time.sleep(4)  # the length of the observation, not a wait for readiness
    booted = len(re.findall(r"Booting worker with pid", server.log()))
    assert 5 <= booted <= 14, booted  # without the waits: hundreds
    assert server.exited() is None  # still up, as gunicorn stays up


def smartspawn_cli(root, *args):
    return subprocess.run([sys.executable, "-m", "smartspawn", *args], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TEST_DIR": str(root)})


def test_smartspawn_check_config_reports_a_bad_value(tmp_path):
    """gunicorn's --check-config runs before any worker class is loaded, so it cannot
    see smartspawn's settings; `smartspawn check-config` takes the same arguments and
    reports a bad value as gunicorn reports its own (exit 1, setting and value named)."""
    shutil.copy(APPS / "counting.py", tmp_path / "app.py")
    (tmp_path / "bad.py").write_text('fork_worker = "often"\n')
    (tmp_path / "good.py").write_text("fork_worker = 500\nworkers = 3\n")
    bad = smartspawn_cli(tmp_path, "check-config", "-c", "bad.py", "app:app")
    assert bad.returncode == 1, bad
    assert "fork_worker" in bad.stderr and "often" in bad.stderr, bad.stderr
    good = smartspawn_cli(tmp_path, "check-config", "-c", "good.py", "app:app")
    assert good.returncode == 0, good
    printed = smartspawn_cli(tmp_path, "print-config", "-c", "good.py", "app:app")
    assert printed.returncode == 0, printed
    assert re.search(r"^fork_worker += \(500,\)$", printed.stdout, re.M), printed.stdout
    assert re.search(r"^spawn_method += smart$", printed.stdout, re.M)
    assert re.search(r"^workers += 3$", printed.stdout, re.M)


def test_smartspawn_check_config_with_a_double_dash_checks_and_exits(tmp_path):
    """`--` before the app (argparse's end of options) must not make the check a server."""
    shutil.copy(APPS / "counting.py", tmp_path / "app.py")
    (tmp_path / "good.py").write_text("fork_worker = 500\n")
    done = smartspawn_cli(tmp_path, "check-config", "-c", "good.py", "--bind", "127.0.0.1:0",
                          "--no-control-socket", "--", "app:app")
    assert done.returncode == 0, done
    assert "Listening at" not in done.stderr
