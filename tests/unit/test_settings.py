"""Every smartspawn setting's validation, in-process, by the two paths a value takes:

- at start: gunicorn loads gunicorn.conf.py without knowing smartspawn's names (its table
  is built before the worker class is imported), then install_settings() applies them
  from the executed module (SmartArbiter.run prints the ConfigError and exits 1);
- on HUP: gunicorn parses them itself (importing gunicorn_smartspawn.shared.config registered
  them) and exits 1 on a bad one, which SmartArbiter.reload_config catches.

tests/chaos/test_bad_input.py proves the whole path with real servers for a few values.
Also: one list of setting names (config.SMARTSPAWN_NAMES) that the README, the generated
docs/configuration.md, the bad-value tables and the parity tests all follow.
"""
import re
import sys
from pathlib import Path

import pytest
from gunicorn.app.base import Application
from gunicorn.errors import ConfigError

from bad_settings import (BAD_ON_HUP, BAD_SETTINGS, BAD_SETTINGS_UNCAUGHT_AT_START,
                          GOOD_SETTINGS, setting_of)
from gunicorn_smartspawn.shared import config
from gunicorn_smartspawn.shared.config import (
    SMARTSPAWN_NAMES, SMARTSPAWN_SETTINGS, install_settings,
)

ROOT = Path(__file__).resolve().parents[2]
HOOKS = {s.name for s in SMARTSPAWN_SETTINGS if s.section == "Server Hooks"}


class ConfigFile(Application):
    """gunicorn loading one config, as `gunicorn -c LOCATION` does (no argv): a file
    (sys.modules["__config__"]) or "python:module".

    `knows_smartspawn=False`: gunicorn's table without smartspawn's names, as at first
    start; True: with them, as on HUP. Exits 1 (SystemExit) on a value it rejects.
    """

    def __init__(self, location, knows_smartspawn):
        self.location, self.knows_smartspawn = str(location), knows_smartspawn
        super().__init__()

    def load_default_config(self):
        super().load_default_config()
        self.cfg.set("config", self.location)
        if not self.knows_smartspawn:
            for name in SMARTSPAWN_NAMES:
                del self.cfg.settings[name]

    def load_config(self):
        self.load_config_from_module_name_or_filename(self.location)

    def init(self, parser, opts, args):
        raise AssertionError("not called: load_config is ours")

    def load(self):
        raise AssertionError("no app is loaded here")


@pytest.fixture
def conf(tmp_path, monkeypatch):
    """conf(line) -> the path of a gunicorn.conf.py holding `line`. gunicorn puts the
    executed file in sys.modules["__config__"]: restored after the test."""
    monkeypatch.delitem(sys.modules, "__config__", raising=False)

    def write(line):
        path = tmp_path / "gunicorn.conf.py"
        path.write_text(line + "\n", encoding="utf-8")
        return path
    return write


def at_start(path):
    """The Config after gunicorn loaded `path` and smartspawn installed its settings;
    raises ConfigError as install_settings does."""
    app = ConfigFile(path, knows_smartspawn=False)
    assert not set(SMARTSPAWN_NAMES) & set(app.cfg.settings)
    warnings = install_settings(app.cfg)
    assert warnings == []
    return app.cfg


def on_hup(path):
    """The Config gunicorn loads from `path` on HUP (app.reload(): SystemExit on error)."""
    return ConfigFile(path, knows_smartspawn=True).cfg


# -- bad values ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, named", BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_value_at_start_is_a_config_error_naming_setting_and_value(conf, line, named):
    with pytest.raises(ConfigError) as error:
        at_start(conf(line))
    assert str(error.value).startswith("Invalid value for smartspawn setting " + named)
    assert str(error.value).count("\n") == 0  # one line: "Error: ..." in the log


@pytest.mark.parametrize("line, named", BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_value_on_hup_exits_1_naming_setting_and_value(conf, capsys, line, named):
    with pytest.raises(SystemExit) as exited:
        on_hup(conf(line))
    assert exited.value.code == 1
    name = setting_of(line)
    value = sys.modules["__config__"].__dict__[name]
    assert "Invalid value for %s: %s\n" % (name, value) in capsys.readouterr().err


@pytest.mark.parametrize("line, named", BAD_SETTINGS_UNCAUGHT_AT_START,
                         ids=[b[0] for b in BAD_SETTINGS_UNCAUGHT_AT_START])
def test_a_number_too_large_for_a_float_on_hup_exits_1(conf, capsys, line, named):
    with pytest.raises(SystemExit):
        on_hup(conf(line))
    assert "Invalid value for %s: " % setting_of(line) in capsys.readouterr().err


@pytest.mark.parametrize("line, named", BAD_SETTINGS_UNCAUGHT_AT_START,
                         ids=[b[0] for b in BAD_SETTINGS_UNCAUGHT_AT_START])
def test_a_number_too_large_for_a_float_at_start_is_a_config_error(conf, line, named):
    with pytest.raises(ConfigError) as error:
        at_start(conf(line))
    assert str(error.value).startswith("Invalid value for smartspawn setting " + named)


def test_every_setting_has_bad_values_and_one_for_hup():
    """A new setting fails here until it has cases (and a row in the chaos HUP test)."""
    with_bad = {setting_of(line) for line, _ in BAD_SETTINGS}
    assert sorted(set(SMARTSPAWN_NAMES) - with_bad) == []
    assert sorted(with_bad - set(SMARTSPAWN_NAMES)) == []
    assert sorted(BAD_ON_HUP) == sorted(SMARTSPAWN_NAMES)
    lines = {line for line, _ in BAD_SETTINGS}
    for name, line in BAD_ON_HUP.items():
        assert setting_of(line) == name and line in lines, (name, line)


def test_every_bad_case_names_the_setting_its_line_sets():
    for line, named in BAD_SETTINGS + BAD_SETTINGS_UNCAUGHT_AT_START:
        assert named.startswith(setting_of(line) + "="), (line, named)


# -- good values and defaults --------------------------------------------------------------

@pytest.mark.parametrize("line, name, value", GOOD_SETTINGS, ids=[g[0] for g in GOOD_SETTINGS])
def test_good_value_is_accepted_alike_at_start_and_on_hup(conf, line, name, value):
    path = conf(line)
    started, reloaded = at_start(path).settings[name].get(), on_hup(path).settings[name].get()
    if value is callable:
        assert callable(started) and callable(reloaded)
    else:
        assert (started, type(started)) == (value, type(value))
        assert (reloaded, type(reloaded)) == (value, type(value))


def test_every_setting_has_a_good_value():
    assert sorted(set(SMARTSPAWN_NAMES) - {name for _, name, _ in GOOD_SETTINGS}) == []


def test_an_empty_config_installs_every_setting_with_its_default(conf):
    cfg = at_start(conf("# nothing"))
    for setting in SMARTSPAWN_SETTINGS:
        value = getattr(cfg, setting.name)
        if setting.name in HOOKS:
            assert value is setting.default, setting.name
        elif setting.default is None:
            assert value is None, setting.name
        else:
            assert value == setting.validator(setting.default), setting.name
    assert cfg.fork_worker == () and cfg.spawn_method == "smart"


def test_a_value_gunicorn_already_parsed_is_left_alone(conf):
    """After a HUP, or with a custom Application: install_settings() changes nothing."""
    app = ConfigFile(conf("fork_worker = 5"), knows_smartspawn=True)
    before = dict(app.cfg.settings)
    assert install_settings(app.cfg) == []
    assert app.cfg.settings == before and app.cfg.fork_worker == (5,)


def test_a_python_module_config_is_read_too(monkeypatch):
    """`-c python:module`: the settings come from that module, not __config__."""
    module = type(sys)("smartspawn_unit_conf")
    module.fork_worker = "often"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    app = ConfigFile("python:" + module.__name__, knows_smartspawn=False)
    with pytest.raises(ConfigError, match=r"smartspawn setting fork_worker='often': "):
        install_settings(app.cfg)


def test_misspelled_and_unknown_smartspawn_names_are_warned_about(conf):
    app = ConfigFile(conf('spawn_methd = "direct"\nsmartspawn_thing = 1\n_private = 2\n'
                          'workers = 3\nsome_helper = 4'), knows_smartspawn=False)
    warnings = install_settings(app.cfg)
    assert warnings == [
        "Unknown setting 'spawn_methd' in the gunicorn config is ignored "
        "(did you mean 'spawn_method'?)",
        "Unknown setting 'smartspawn_thing' in the gunicorn config is ignored"]
    assert app.cfg.spawn_method == "smart"  # the misspelled value was not applied


# -- one list of settings ------------------------------------------------------------------

def test_the_list_of_settings_is_every_setting_config_declares():
    declared = [obj for obj in vars(config).values() if isinstance(obj, type)
                and issubclass(obj, config.Setting) and obj is not config.Setting]
    assert sorted(s.name for s in declared) == sorted(SMARTSPAWN_NAMES)
    assert len(set(SMARTSPAWN_NAMES)) == len(SMARTSPAWN_NAMES)
    assert SMARTSPAWN_NAMES == tuple(s.name for s in SMARTSPAWN_SETTINGS)


def readme_settings_table():
    """The setting names of README's "Settings" table, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, re.M), section


def test_readme_names_every_setting():
    """Settings: a row of the table; hooks: the line under it ("`on_preload(preloader)`")."""
    rows, section = readme_settings_table()
    settings = [name for name in SMARTSPAWN_NAMES if name not in HOOKS]
    assert sorted(set(settings) - set(rows)) == [], "missing rows in README's settings table"
    assert sorted(set(rows) - set(settings)) == []
    assert len(rows) == len(set(rows))
    assert sorted(h for h in HOOKS if "`%s(" % h not in section) == []


def test_configuration_doc_has_a_section_per_setting():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## `(\w+)`$", text, re.M)
    assert sections == list(SMARTSPAWN_NAMES)


def test_parity_tests_take_their_settings_from_config():
    from parity import test_config as parity_config
    assert parity_config.SMARTSPAWN_SETTINGS == set(SMARTSPAWN_NAMES)
    source = (ROOT / "tests" / "parity" / "test_config.py").read_text(encoding="utf-8")
    # Derived, not spelled out again: it names only the few its scenarios set or check.
    spelled_out = set(re.findall(r"[\"'](\w+)[\"']", source)) & set(SMARTSPAWN_NAMES)
    assert len(spelled_out) < len(SMARTSPAWN_NAMES) // 2, sorted(spelled_out)



def test_soft_timeout_at_or_above_timeout_is_warned_about(conf):
    def warnings(text):
        return install_settings(ConfigFile(conf(text), knows_smartspawn=False).cfg)

    assert warnings("soft_timeout = 30") == [
        "soft_timeout = 30 is not below timeout = 30: with the sync worker, a request is "
        "killed before its soft timeout is reported"]
    for text in ("soft_timeout = 10", "soft_timeout = 0", "soft_timeout = 60\ntimeout = 0"):
        assert warnings(text) == [], text
