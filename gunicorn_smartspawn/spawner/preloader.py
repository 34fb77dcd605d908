"""The preloader: a child of the master that imports the app once and forks workers from it.

    master (never imports the app; child subreaper)
     ├─ preloader        imports the app, gc.collect() + gc.freeze(), forks on request
     └─ worker 1..N      double-forked by the preloader, re-parented to the master

Both sides live here, as in CPython's forkserver: `start_preloader()` runs in the master
and returns the child's pid and channel (the master's table records them, fleet.py);
`Preloader.run()` is the child.
"""
import os
import sys
import tempfile
import time

from gunicorn import util
from gunicorn.errors import AppImportError

from gunicorn_smartspawn import forksafety
from gunicorn_smartspawn.host import patches
from gunicorn_smartspawn.shared import _linux, protocol, signals
from gunicorn_smartspawn.spawner.base import Spawner
from gunicorn_smartspawn.spawner.template import Template
from gunicorn_smartspawn.worker import appsignals
from gunicorn_smartspawn.worker.base import APP_LOAD_ERROR, WORKER_BOOT_ERROR


def start_preloader(arbiter, generation):
    """Fork a preloader for `generation` (the master's own fds are closed at the fork);
    returns (its pid, the master's end of its channel)."""
    counters = arbiter.fleet.counters  # read before the fork: the child gets it handed in
    master_end, child_end = protocol.channel_pair()
    pid = os.fork()
    if pid:
        child_end.close()
        master_end.setblocking(False)
        return pid, master_end

    code = 1
    try:
        master_end.close()
        code = Preloader(arbiter, child_end, generation, counters).run()
    except BaseException:
        arbiter.log.exception("Exception in preloader (pid: %s, gen=%s)",
                              os.getpid(), generation)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Preloader(Spawner):
    """The preloader process. The `on_preload` hook receives it as `preloader`."""

    spawned_from = "preloader"
    hook = "on_preload"
    template_class = Template

    def run(self):
        """Load the app, then fork workers until the master goes; returns the exit code."""
        if not _linux.die_with_parent(self.master_pid):
            return 0
        self.init_signals()
        if not self.drop_privileges():
            return 0
        util._setproctitle("smartspawn preloader [%s] gen=%s"
                           % (self.server.proc_name, self.generation))
        # Once per master: a HUP's preloader has the fds the first one noted.
        forksafety.record_inherited_fds(self.known_fds(), noted=self.server.ever_ready)
        code = self.load_app()
        if code == 0:
            self.serve()
        return code

    def drop_privileges(self):
        """Become gunicorn's `user`/`group` before any application code runs.

        In the order that works: the group and the supplementary groups while we may
        still change them, the user last. (gunicorn's set_owner_process skips setgid
        with `initgroups`; its workers keep the master's group.) Workers inherit this
        identity, so gunicorn's own drop in each worker finds nothing left to do.
        """
        cfg = self.cfg
        if cfg.gid != os.getgid():
            os.setgid(cfg.gid)
        if cfg.initgroups and cfg.uid != os.getuid():
            try:
                os.initgroups(util.get_username(cfg.uid), cfg.gid)
            except KeyError:
                pass  # a uid with no name: gunicorn skips initgroups too
        if cfg.uid != os.getuid():
            os.setuid(cfg.uid)
        # os.initgroups() would fail in the workers with EPERM.
        patches.override_setting(cfg, "initgroups", False)
        return _linux.die_with_parent(self.master_pid)  # setuid() cleared it

    def load_app(self):
        started = time.monotonic()
        try:
            self.server.worker_class.before_app_import()  # gevent: monkey-patching
            self.app_signals = appsignals.record(self.app.wsgi)
            if self.app_signals:
                self.log.debug("preloader: the app's import set %s; each worker gets "
                               "them", self.app_signals.names())
            taken = self.app_signals.touched() & {signals.SIG_COMMAND, signals.SIG_DUMP}
            if taken:
                self.log.warning("The app's import set a handler for %s, which smartspawn's "
                                 "master uses to reach its workers: workers keep "
                                 "smartspawn's", ", ".join(map(appsignals.signal_name,
                                                               sorted(taken))))
            self.cfg.on_preload(self)
            forksafety.check(self.cfg, self.log, "preloader", "on_preload", self.known_fds())
        except forksafety.ForkUnsafe as exc:
            self.log.error("%s", exc)
            return self.boot_failed(WORKER_BOOT_ERROR, str(exc))
        except AppImportError as exc:
            self.log.debug("Exception while loading the application", exc_info=True)
            print("%s" % exc, file=sys.stderr)
            return self.boot_failed(APP_LOAD_ERROR, str(exc))
        except BaseException as exc:
            self.log.exception("Exception in preloader while loading the application")
            return self.boot_failed(WORKER_BOOT_ERROR, "%s: %s" % (type(exc).__name__, exc))
        # gunicorn's WorkerTmp finds the temp dir on first use by writing a test file:
        # do it once here rather than in every new worker.
        tempfile.gettempdir()
        self.announce_ready(started)
        return 0
