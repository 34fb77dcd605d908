"""The examples/ a user copies (Django, Flask, FastAPI) serve through a refork and a HUP
under load with no failed request, each with its own gunicorn.conf.py, unchanged.

Each example folder is copied as it is and started with its own config (worker class,
hooks, fork_recipes): the test adds only a loopback port, two workers, a pidfile and a
control socket on the command line. Their frameworks are the `examples` dependency group
(`pip install -e . --group examples`).
"""
import importlib.util
import re
import shutil
import signal
from pathlib import Path

import pytest

from conftest import GUNICORN, LoadLoop, Server, wait_for
from services import unavailable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORKERS = 2

# (folder, the app as gunicorn.conf.py's wsgi_app names it, the config's worker class,
#  what it imports)
CASES = [
    pytest.param(("django", "mysite.wsgi", "smartspawn.Worker", ["django"]), id="django"),
    pytest.param(("flask", "app:app", "smartspawn.Worker", ["flask", "sqlalchemy"]),
                 id="flask"),
    pytest.param(("fastapi", "app:app", "smartspawn.UvicornWorker",
                  ["fastapi", "uvicorn_worker"]), id="fastapi"),
]


@pytest.fixture
def example_server(tmp_path, request):
    servers = []

    def make(folder, app, worker_class):
        root = tmp_path / folder
        shutil.copytree(EXAMPLES / folder, root)
        config = (root / "gunicorn.conf.py").read_text()
        # No -k: the worker class is the config's. `worker_class` tells teardown how the
        # workers stop.
        server = Server(root, app=app, config=config, workers=WORKERS, command=[GUNICORN],
                        worker_class=worker_class)
        servers.append(server)
        return server.start()

    yield make
    failed = getattr(request.node, "report_call", None)
    for server in servers:
        if failed is None or failed.failed:
            print("---- log of %s ----\n%s" % (server.root.name, server.log()))
        server.teardown()


def generations(server):
    """The gen=N of each worker serving now (process titles)."""
    return sorted(int(re.search(r"gen=(\d+)", title).group(1))
                  for pid, title in server.children() if "worker [" in title)


@pytest.mark.parametrize("case", CASES)
def test_example_serves_through_a_refork_and_a_hup_under_load(example_server, case):
    folder, app, worker_class, imports = case
    for name in imports:
        if importlib.util.find_spec(name) is None:
            unavailable("%s (the examples dependency group: pip install -e . --group "
                        "examples)" % name)
    server = example_server(folder, app, worker_class)
    assert "Using worker: %s" % worker_class in server.log()
    assert generations(server) == [1] * WORKERS

    def refork():
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
        wait_for(lambda: generations(server) == [2] * WORKERS, timeout=10,
                 what="the workers of generation 2\n" + server.log())

    def hup():
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload to generation 3 \(HUP\) done", timeout=30)
        wait_for(lambda: generations(server) == [3] * WORKERS, timeout=20,
                 what="the workers of generation 3\n" + server.log())

    with LoadLoop(server, max_requests=20000, max_seconds=40) as load:
        refork()
        hup()
        after = load.ok
        wait_for(lambda: load.ok >= after + 20, timeout=10, what="requests to generation 3")
    assert load.failures == [] and load.ok > 20
    # The example's hooks or fork_recipes closed what a fork must not share: the preloader
    # and the template (which served requests) forked with nothing to warn about.
    assert not re.findall(r"\[WARNING\] fork safety.*", server.log())
    assert server.get_json()["pid"] in server.worker_pids()
