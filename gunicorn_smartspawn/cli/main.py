"""The `smartspawn` command (also `python -m smartspawn`).

- ``smartspawn run ARGS``: gunicorn, with ``-k smartspawn.Worker`` by default and a flag
  for every smartspawn setting (``--fork-worker 1000``), also in ``GUNICORN_CMD_ARGS``.
  Plain ``gunicorn -k smartspawn.Worker`` builds its parser before it imports the worker
  class, so there smartspawn's settings are read from the config file only; here
  config.py is imported (its Settings registered) before gunicorn's parser is built.
- ``smartspawn status``: what each process of a running server costs (status.py);
- ``smartspawn check-config ARGS`` and ``smartspawn print-config ARGS``: gunicorn's
  ``--check-config`` and ``--print-config`` for the same ARGS (``-c gunicorn.conf.py
  myapp:app ...``), with smartspawn's settings checked and printed too. gunicorn runs its
  own before it loads any worker class, so no smartspawn code runs there: a bad
  smartspawn value would only be reported when the server starts. Here the settings are
  registered (config.py is imported) before gunicorn's parser reads the configuration,
  so it checks them as its own, with its own messages.
"""
import argparse
import sys

import gunicorn
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import Config
from gunicorn.errors import ConfigError

import gunicorn_smartspawn
from gunicorn_smartspawn.cli import status
from gunicorn_smartspawn.shared.config import install_settings

CONFIG_COMMANDS = ("check-config", "print-config")
COMMANDS = {
    "run": "run gunicorn with smartspawn (-k smartspawn.Worker; every setting has a flag)",
    "status": "what each process of a running server costs (RSS, PSS, USS, roles)",
    "check-config": "check the configuration (gunicorn's --check-config) and exit",
    "print-config": "print the configuration (gunicorn's --print-config) and exit",
}
DEFAULT_WORKER_CLASS = "smartspawn.Worker"


def version_text():
    return "smartspawn %s (gunicorn %s)" % (gunicorn_smartspawn.__version__,
                                            gunicorn.__version__)


class ConfigCheck(WSGIApplication):
    """gunicorn's own application, whose run() checks (and prints) the configuration and
    exits; first, the warning the server gives for a misspelled smartspawn name."""

    def run(self):
        try:
            warnings = install_settings(self.cfg)
        except ConfigError as exc:  # a config whose values gunicorn did not parse
            print("\nError: %s\n" % exc, file=sys.stderr)
            sys.exit(1)
        for warning in warnings:
            print("Warning: %s" % warning, file=sys.stderr)
        super().run()


class RunConfig(Config):
    """gunicorn's Config, whose parser reads the arguments after `run` (gunicorn's reads
    sys.argv[1:]), and whose --version names smartspawn's version too.

    sys.argv itself is left as it is: gunicorn re-executes it on USR2 and re-parses it on
    HUP, both of which must find `smartspawn run ...` again."""

    def __init__(self, argv, usage=None, prog=None):
        super().__init__(usage, prog)  # first: Config.__setattr__ reads self.settings
        self.run_argv = argv

    def parser(self):
        parser = super().parser()
        for action in parser._actions:
            if isinstance(action, argparse._VersionAction):
                action.version = version_text()
        parse_args = parser.parse_args

        def parse_run_args(args=None, namespace=None):
            return parse_args(self.run_argv if args is None else args, namespace)
        parser.parse_args = parse_run_args
        return parser


class RunApplication(WSGIApplication):
    """`smartspawn run`: gunicorn's WSGIApplication with smartspawn's worker by default."""

    def __init__(self, argv):
        self.run_argv = argv
        super().__init__("%(prog)s [OPTIONS] [APP_MODULE]", prog="smartspawn run")

    def load_default_config(self):
        self.cfg = RunConfig(self.run_argv, self.usage, prog=self.prog)
        # Before the config file and the flags, which may name another smartspawn class.
        self.cfg.set("worker_class", DEFAULT_WORKER_CLASS)

    def load_config(self):
        super().load_config()
        # smartspawn's classes are the package's own (smartspawn.Worker is an alias):
        # by their module, as cli/ does not import the worker code (tests/test_layout.py).
        if getattr(self.cfg.worker_class, "__module__", None) != gunicorn_smartspawn.__name__:
            raise ConfigError("worker_class=%r: smartspawn run needs a smartspawn worker class "
                              "(smartspawn.Worker, smartspawn.ThreadWorker, ...); for another "
                              "one, run gunicorn" % self.cfg.worker_class_str)


def usage():
    lines = ["usage: smartspawn [--version] COMMAND [ARGS]", "", "commands:"]
    lines += ["  %-13s %s" % (name, text) for name, text in COMMANDS.items()]
    lines += ["", "`smartspawn COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-v", "--version"):
        print(version_text())
        return 0
    if argv[0] == "run":
        RunApplication(argv[1:]).run()
        return 0
    if argv[0] in CONFIG_COMMANDS:
        # gunicorn's parser reads sys.argv: the flag, then the same arguments (after a
        # `--` among them, a flag would be taken for the app's name).
        sys.argv = ["smartspawn " + argv[0], "--" + argv[0], *argv[1:]]
        ConfigCheck("%(prog)s [OPTIONS] [APP_MODULE]", prog=sys.argv[0]).run()
    if argv[0] != "status" and not argv[0].startswith("-"):  # `smartspawn --json status`
        print("smartspawn: unknown command %r\n\n%s" % (argv[0], usage()), file=sys.stderr)
        return 2
    return status.main(argv)
