"""What the master tells systemd (``Type=notify``, ``Type=notify-reload``), through
gunicorn's own ``systemd.sd_notify`` (a no-op without ``$NOTIFY_SOCKET``).

gunicorn says ``READY=1`` as its master boots. With ``--preload`` the app is imported
by then; a smartspawn master imports nothing, and its preloader starts importing only
after that: gunicorn's READY would come before anything can serve (by the length of the
import). So a smart server withholds gunicorn's (patches.gunicorn_ready_withheld) and
says, from the master:

- ``READY=1`` once the first worker of the first generation is in its serving loop (its
  heartbeat has moved: its next step is accept());
- ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd 253's notify-reload) when a HUP
  starts, then ``READY=1`` once ``workers`` workers of the new generation serve (the old
  ones are being stopped), or at once when the reload failed (the old generation keeps
  serving, and ``STATUS`` says why);
- ``STATUS=`` the generation, the serving workers and the last refork, whenever that
  text changes (a refork's end among them);
- ``STOPPING=1`` when the master begins to stop.

A server that spawns directly (``spawn_method = "direct"``, or a fallback at start) keeps
gunicorn's notifications: its Notifier is off, as it is without ``$NOTIFY_SOCKET``.
"""
import time

from gunicorn import systemd

from gunicorn_smartspawn.master.fleet import State

SERVING = (State.SERVING, State.OUTGOING)


class Notifier:
    """The master's notifications; `fleet` is its table of children (fleet.py)."""

    def __init__(self, log, fleet, enabled, send=None, clock=time.time):
        self.fleet, self.enabled, self.clock = fleet, enabled, clock
        self.send = send or (lambda message: systemd.sd_notify(message, log))
        self.ready_once = False
        # The generation whose serving makes READY=1, and whether all `workers` of it
        # must serve (a HUP) or one (the start); None while nothing is awaited.
        self.awaited = (1, False)
        self.reloading = False
        self.stopped = False
        self.reload_failure = None   # why the last HUP failed, until the next one
        self.refork = None           # the last refork done, and when it was seen done
        self.refork_at = None
        self.status = None           # the last STATUS sent

    def waiting(self):
        """True while READY=1 waits for workers to serve: the master looks often."""
        return self.enabled and not self.stopped and self.awaited is not None

    def turn(self, generation, target, refork):
        """Each turn of the master's loop: READY=1 once what is awaited serves; the STATUS
        whenever it changes. `target`: the `workers` setting; `refork`: the last refork
        done (refork.Refork) or None."""
        if not self.enabled or self.stopped:
            return
        if refork is not self.refork:
            self.refork, self.refork_at = refork, self.clock()
        serving = self.serving()
        ready = False
        if self.awaited is not None:
            awaited, whole = self.awaited
            ready = sum(g >= awaited for g in serving) >= (target if whole else 1)
        self.publish(ready, generation, target)

    def serving(self):
        """The generation of each worker in its serving loop."""
        return [r.generation for r in self.fleet.worker_records()
                if r.state in SERVING and r.heartbeat_moved()]

    def publish(self, ready, generation, target):
        """Send READY=1 (`ready`) with the STATUS, or the STATUS alone if it changed."""
        if ready:
            self.awaited = None
            self.ready_once = True
            self.reloading = False
        status = self.status_line(generation, len(self.serving()), target)
        if ready or status != self.status:
            self.status = status
            self.send(("READY=1\n" if ready else "") + "STATUS=" + status)

    def reload_started(self, generation):
        """A HUP: the workers of `generation` are to replace the running ones (None:
        gunicorn's own reload, done when it returns: reloaded). Before the first READY=1
        it changes nothing systemd sees: the start is not over."""
        if not self.enabled or not self.ready_once:
            return
        self.awaited = None if generation is None else (generation, True)
        self.reloading = True
        self.reload_failure = None
        self.status = "Reloading (HUP)"
        self.send("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=%s"
                  % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000, self.status))

    def reload_failed(self, why, generation, target):
        """The HUP failed (`why`): generation `generation` keeps serving."""
        if self.enabled and self.reloading:
            self.reload_failure = "%s (generation %d kept serving)" % (why, generation)
            self.publish(True, generation, target)

    def reloaded(self, generation, target):
        """gunicorn's own reload (direct spawning) returned: its new workers are spawned."""
        if self.enabled and self.reloading:
            self.publish(True, generation, target)

    def stopping(self):
        if self.enabled and not self.stopped:
            self.stopped = True
            self.send("STOPPING=1\nSTATUS=Stopping")

    def status_line(self, generation, serving, target):
        if not self.ready_once:
            what = "Starting: generation %d" % generation
        elif self.reloading:
            what = "Reloading (HUP): generation %d" % generation
        else:
            what = "Generation %d" % generation
        what += ", workers serving: %d (target %d)" % (serving, target)
        if self.refork is not None:
            what += "; last refork: to generation %d (%s) at %s" % (
                self.refork.generation, self.refork.reason,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.refork_at)))
        if self.reload_failure is not None:
            what += "; the last reload failed: %s" % self.reload_failure
        return what
