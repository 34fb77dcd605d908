"""Test app: installs signal dispositions at import, as real apps do.

SIGNALS_MODE (environment) says what the import does:
- "ignore_chld": signal(SIGCHLD, SIG_IGN) ("no zombies from my subprocesses");
- "reap_chld": a SIGCHLD handler that reaps every exited child (waitpid(-1, WNOHANG));
- "handlers": SIGTERM flushes a buffer then chains to the handler it replaced, SIGUSR1
  and SIGUSR2 record themselves, SIGRTMIN+1 records itself, SIGINT is set to SIG_DFL;
- "lazy": the same handlers, installed by a module the app imports at import time
  through importlib (written next to this file by the test as `lazy_signals.py`);
- "timer": a sampling profiler's setup: an ITIMER_PROF every 5 ms with a SIGPROF handler
  that counts ticks, and faulthandler.register(SIGUSR2) (a stack dump on demand).

Each handler appends "<name> <pid>" to signals.txt in TEST_DIR.
GET /        -> {"pid", "dispositions": {signal name: description}}
(`app` for WSGI, `asgi_app` for the ASGI workers)
GET /spawn   -> runs `true` in a subprocess, {"pid", "returncode"}
GET /ticks   -> {"pid", "ticks"}: SIGPROF ticks this process counted ("timer")
"""
import faulthandler
import importlib
import json
import os
import signal
import subprocess
import time

TEST_DIR = os.environ["TEST_DIR"]
MODE = os.environ.get("SIGNALS_MODE", "handlers")
WATCHED = ["SIGCHLD", "SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGHUP",
           "SIGWINCH", "SIGABRT", "SIGRTMIN+1"]


def signum(name):
    return signal.SIGRTMIN + 1 if name == "SIGRTMIN+1" else getattr(signal, name)


def record(name):
    with open(os.path.join(TEST_DIR, "signals.txt"), "a") as f:
        f.write("%s %d\n" % (name, os.getpid()))


def recorder(name, chain=None):
    def handler(sig, frame):
        record(name)
        if callable(chain):
            chain(sig, frame)
    handler.__qualname__ = "app:" + name
    return handler


def reap(sig, frame):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


reap.__qualname__ = "app:reap"


TICKS = [0]


def tick(sig, frame):
    TICKS[0] += 1


def install():
    if MODE == "timer":
        signal.signal(signal.SIGPROF, tick)
        signal.setitimer(signal.ITIMER_PROF, 0.005, 0.005)
        faulthandler.register(signal.SIGUSR2)
    elif MODE == "ignore_chld":
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    elif MODE == "reap_chld":
        signal.signal(signal.SIGCHLD, reap)
    elif MODE == "handlers":
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, recorder("term", chain=previous))
        signal.signal(signal.SIGUSR1, recorder("usr1"))
        signal.signal(signal.SIGUSR2, recorder("usr2"))
        signal.signal(signum("SIGRTMIN+1"), recorder("rtmin1"))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    elif MODE == "lazy":
        importlib.import_module("lazy_signals")


install()


def describe(handler):
    if handler == signal.SIG_DFL:
        return "SIG_DFL"
    if handler == signal.SIG_IGN:
        return "SIG_IGN"
    name = getattr(handler, "__qualname__", type(handler).__name__)
    if name.startswith("app:"):
        return name
    owner = getattr(handler, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("gunicorn"):
        return "gunicorn:" + handler.__name__
    return "other"


def respond(path):
    if path == "/spawn":
        return {"pid": os.getpid(), "returncode": subprocess.run(["true"]).returncode}
    if path == "/ticks":
        deadline = time.process_time() + 0.2  # CPU time: what ITIMER_PROF counts
        while time.process_time() < deadline:
            pass
        return {"pid": os.getpid(), "ticks": TICKS[0]}
    return {"pid": os.getpid(),
            "dispositions": {name: describe(signal.getsignal(signum(name))) for name in WATCHED}}


def app(environ, start_response):
    data = json.dumps(respond(environ["PATH_INFO"])).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]


async def asgi_app(scope, receive, send):
    """The same, for the ASGI workers."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    data = json.dumps(respond(scope["path"])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})
