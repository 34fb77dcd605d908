"""The `smartspawn` command (also `python -m smartspawn`).

- ``smartspawn status``: what each process of a running server costs (status.py);
- ``smartspawn check-config ARGS`` and ``smartspawn print-config ARGS``: gunicorn's
  ``--check-config`` and ``--print-config`` for the same ARGS (``-c gunicorn.conf.py
  myapp:app ...``), with smartspawn's settings checked and printed too. gunicorn runs its
  own before it loads any worker class, so no smartspawn code runs there: a bad
  smartspawn value would only be reported when the server starts. Here the settings are
  registered (config.py is imported) before gunicorn's parser reads the configuration,
  so it checks them as its own, with its own messages.
"""
import sys

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.errors import ConfigError

from gunicorn_smartspawn.cli import status
from gunicorn_smartspawn.shared.config import install_settings

CONFIG_COMMANDS = ("check-config", "print-config")


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CONFIG_COMMANDS:
        # gunicorn's parser reads sys.argv: the flag, then the same arguments (after a
        # `--` among them, a flag would be taken for the app's name).
        sys.argv = ["smartspawn " + argv[0], "--" + argv[0], *argv[1:]]
        ConfigCheck("%(prog)s [OPTIONS] [APP_MODULE]", prog=sys.argv[0]).run()
    return status.main(argv)
