"""`smartspawn run`'s parser, in-process: a flag for every smartspawn setting (the hooks
excepted), read from the command line and from GUNICORN_CMD_ARGS, errors that name the
setting and the value, smartspawn.Worker by default. tests/test_cli.py runs the command.
"""
import sys

import pytest
from gunicorn.config import Config

from bad_settings import BAD_FLAGS, GOOD_FLAGS
from gunicorn_smartspawn.cli import main as cli
from gunicorn_smartspawn.shared.config import SMARTSPAWN_SETTINGS

HOOKS = {s.name for s in SMARTSPAWN_SETTINGS if s.section == "Server Hooks"}
FLAGGED = [s for s in SMARTSPAWN_SETTINGS if s.name not in HOOKS]


def parse(argv):
    """The Config after gunicorn's parser read `argv` and set what it found."""
    cfg = Config(prog="smartspawn run")
    for name, value in vars(cfg.parser().parse_args(argv)).items():
        if value is not None and name != "args":
            cfg.set(name, value)
    return cfg


def test_every_setting_but_the_hooks_has_its_flag():
    assert FLAGGED and HOOKS
    for setting in FLAGGED:
        assert setting.cli == ["--" + setting.name.replace("_", "-")], setting.name
    assert [s.name for s in SMARTSPAWN_SETTINGS if s.name in HOOKS and s.cli] == []


def test_every_flag_has_a_good_and_a_bad_value():
    names = {s.name for s in FLAGGED}
    assert names == {name for _, name, _ in GOOD_FLAGS}
    assert names - {"fork_recipes", "refork_on_memory"} == {
        named.split("=")[0] for _, named in BAD_FLAGS}  # those two take no value


@pytest.mark.parametrize("argv, name, value", GOOD_FLAGS)
def test_good_flag_sets_the_value_a_config_file_would(argv, name, value):
    assert getattr(parse(argv + ["app:app"]), name) == value


@pytest.mark.parametrize("argv, named", BAD_FLAGS)
def test_bad_flag_exits_2_naming_setting_and_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv + ["app:app"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument %s: %s: " % (argv[0].split("=")[0], named) in err, err


@pytest.fixture
def run_app(tmp_path, monkeypatch):
    """run_app(argv, env_args=None) -> `smartspawn run ARGV`'s application, configured
    (not run), in an empty directory: no gunicorn.conf.py is found."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # gunicorn's chdir() prepends to it

    def make(argv, env_args=None):
        if env_args is None:
            monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
        else:
            monkeypatch.setenv("GUNICORN_CMD_ARGS", env_args)
        return cli.RunApplication(argv)
    return make


def test_run_defaults_to_smartspawn_worker_and_reads_its_flags(run_app):
    app = run_app(["--fork-worker", "100", "--gc-freeze", "immortal", "app:app"])
    assert app.cfg.worker_class_str == cli.DEFAULT_WORKER_CLASS
    assert (app.cfg.fork_worker, app.cfg.gc_freeze, app.app_uri) == ((100,), "immortal",
                                                                      "app:app")


def test_gunicorn_cmd_args_sets_smartspawn_settings_and_flags_win(run_app):
    app = run_app(["--oob-gc=5", "app:app"], env_args="--fork-worker 100 --oob-gc 7 --oob-gc")
    assert (app.cfg.fork_worker, app.cfg.oob_gc) == ((100,), 5)


def test_bad_value_in_gunicorn_cmd_args_names_setting_and_value(run_app, capsys):
    with pytest.raises(SystemExit) as exc:
        run_app(["app:app"], env_args="--max-worker-memory lots")
    assert exc.value.code == 2
    assert "max_worker_memory='lots'" in capsys.readouterr().err


def test_other_smartspawn_classes_are_accepted(run_app):
    app = run_app(["-k", "smartspawn.ThreadWorker", "--threads", "2", "app:app"])
    assert app.cfg.worker_class_str == "smartspawn.ThreadWorker"


def test_a_class_that_is_not_smartspawn_is_refused(run_app, capsys):
    with pytest.raises(SystemExit) as exc:
        run_app(["-k", "sync", "app:app"])
    assert exc.value.code == 1
    assert "worker_class='sync': smartspawn run needs a smartspawn worker class" in (
        capsys.readouterr().err)


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert [name for name in ("run", "status", "check-config", "print-config")
            if "\n  %s " % name not in out] == []


def test_an_unknown_command_exits_2(capsys):
    assert cli.main(["serve"]) == 2
    assert "unknown command 'serve'" in capsys.readouterr().err
