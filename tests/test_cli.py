"""`smartspawn run` and the `smartspawn` command, as real processes: a flag and
GUNICORN_CMD_ARGS both set fork_worker, and the server reforks after requests."""
import os
import re
import signal
import subprocess
import sys

import pytest

import gunicorn_smartspawn

SMARTSPAWN = [sys.executable, "-m", "smartspawn"]
RUN = [*SMARTSPAWN, "run"]


def smartspawn(*args, env=None, cwd=None):
    return subprocess.run([*SMARTSPAWN, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


def refork_after_requests(server, generation=2, limit=3000):
    """Requests until the log says the refork to `generation` is done (bounded in count)."""
    for _ in range(limit):
        server.request("/")
        if re.search(r"refork to generation %d .* done" % generation, server.log()):
            return
    raise AssertionError("no refork within %d requests\n%s" % (limit, server.log()))


def check_clean_stop(server):
    assert server.stop() == 0, server.log()
    log = server.log()
    assert "Traceback" not in log and "SIGKILL" not in log, log


@pytest.mark.parametrize("how", ["flag", "GUNICORN_CMD_ARGS"])
def test_run_reforks_with_fork_worker_from_the_command_line(make_server, how):
    if how == "flag":
        server = make_server(command=RUN, args=("--fork-worker", "5"))
    else:
        server = make_server(command=RUN, env={"GUNICORN_CMD_ARGS": "--fork-worker 5"})
    assert "-k" not in server.cmd and "fork_worker" not in (server.root / "gunicorn.conf.py"
                                                            ).read_text()
    server.start()
    assert "Using worker: smartspawn.Worker" in server.log(), server.log()
    refork_after_requests(server)
    check_clean_stop(server)


def test_hup_parses_the_same_run_arguments_again(make_server):
    # gunicorn re-parses the command line on HUP: `run` and the smartspawn flags must
    # still be understood, and fork_worker still apply to the new generation.
    server = make_server(command=RUN, args=("--fork-worker", "5")).start()
    server.signal(signal.SIGHUP)
    server.wait_log(r"Booting worker with pid: \d+ \(gen=2 from preloader\)", timeout=30)
    refork_after_requests(server, generation=3)
    check_clean_stop(server)


def test_run_accepts_another_smartspawn_class(make_server):
    server = make_server(command=[*RUN, "-k", "smartspawn.ThreadWorker"],
                         args=("--threads", "2", "--fork-worker", "5")).start()
    assert "Using worker: smartspawn.ThreadWorker" in server.log(), server.log()
    refork_after_requests(server)
    check_clean_stop(server)


def test_help_lists_every_command():
    result = smartspawn("--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "status", "check-config", "print-config"):
        assert re.search(r"^  %s " % command, result.stdout, re.M), result.stdout


def test_run_help_lists_the_smartspawn_flags():
    result = smartspawn("run", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--fork-worker", "--gc-freeze", "--oob-gc", "--max-worker-memory"):
        assert flag in result.stdout


@pytest.mark.parametrize("args", [["--version"], ["run", "--version"]])
def test_version_names_smartspawn_and_gunicorn(args):
    result = smartspawn(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("smartspawn %s (gunicorn " % gunicorn_smartspawn.__version__)


def test_bad_flag_value_exits_nonzero_naming_setting_and_value(tmp_path):
    result = smartspawn("run", "--max-worker-memory", "lots", "app:app", cwd=tmp_path)
    assert result.returncode == 2
    assert "max_worker_memory='lots'" in result.stderr, result.stderr


def test_bad_value_in_gunicorn_cmd_args_exits_nonzero_naming_it(tmp_path):
    env = {**os.environ, "GUNICORN_CMD_ARGS": "--fork-worker 0.5"}
    result = smartspawn("run", "app:app", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "fork_worker='0.5'" in result.stderr, result.stderr
