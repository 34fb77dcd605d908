"""HUP with an app that no longer imports: the old generation keeps serving, the error is logged."""
import signal

import pytest

from chaos.helpers import URG_ONLY, Load, check_log, finish, settle
from conftest import wait_for

pytestmark = pytest.mark.chaos

BROKEN = {
    # how the new code is broken: (app.py text, what the log must say)
    "exception": ("raise RuntimeError('broken deploy')\n", r"RuntimeError: broken deploy"),
    "syntax error": ("def app(:\n", r"SyntaxError"),
    "missing attribute": ("VERSION = 'v2'\n", r"Failed to find attribute 'app'"),
    "missing import": ("import no_such_module_here\n",
                       r"No module named 'no_such_module_here'"),
}

# A failed reload is an error the operator must see: these lines are the expected ones.
RELOAD_FAILED = [r"Reload failed: ", r"Exception in preloader while loading the application",
                 r"Traceback", r"^\s", r"Error|Exception: ",
                 r"preloader \(pid: \d+, gen=\d+\) exited with code [34]"]


@pytest.mark.parametrize("broken", list(BROKEN))
def test_hup_with_an_app_that_fails_to_import(chaos_server, broken):
    code, logged = BROKEN[broken]
    server = chaos_server(workers=3).start()
    app_py = server.root / "app.py"
    good = app_py.read_text()
    workers, preloader = server.worker_pids(), server.preloader_pid()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        app_py.write_text(code)
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload failed: preloader \(pid: \d+, gen=2\) exited before it "
                        r"loaded the app.*generation 1 keeps serving", timeout=20)
        server.wait_log(logged)
        load.wait_ok(20)
        assert server.worker_pids() == workers
        assert server.preloader_pid() == preloader
        settle(server, 3, what="after the failed reload")
        # The fix is deployed: the next HUP serves it.
        app_py.write_text(good.replace('VERSION = "v1"', 'VERSION = "v2"'))
        server.signal(signal.SIGHUP)
        wait_for(lambda: {server.get_json()["version"] for _ in range(12)} == {"v2"},
                 timeout=20, what="v2 to be served\n" + server.log())
        settle(server, 3, what="after the good reload")
        load.wait_ok(10)
    assert load.failures == [], load.summary()
    check_log(server, allowed=RELOAD_FAILED)
    finish(server)


def test_hup_storm_of_broken_and_good_code_with_a_template(chaos_server):
    """Broken, broken, good, broken: the last good code wins, nothing is lost."""
    server = chaos_server(workers=3, config=URG_ONLY).start()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    app_py = server.root / "app.py"
    good = app_py.read_text()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        for version in ("broken", "broken", "v3"):
            app_py.write_text(good.replace('VERSION = "v1"', 'VERSION = "%s"' % version)
                              if version != "broken" else "raise RuntimeError('bad')\n")
            hups = server.log().count("Hang up: Master")
            server.signal(signal.SIGHUP)
            wait_for(lambda hups=hups: server.log().count("Hang up: Master") > hups,
                     what="the master to handle the HUP")
        wait_for(lambda: {server.get_json()["version"] for _ in range(12)} == {"v3"},
                 timeout=30, what="v3 to be served\n" + server.log())
        settle(server, 3, what="after the HUPs")
        app_py.write_text("raise RuntimeError('bad again')\n")
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload failed: .*exited before it loaded the app", timeout=20)
        settle(server, 3, what="after the last, broken HUP")
        assert {server.get_json()["version"] for _ in range(12)} == {"v3"}
        load.wait_ok(10)
    assert load.failures == [], load.summary()
    assert not server.watch.count("smartspawn template")  # retired with generation 2
    check_log(server, allowed=RELOAD_FAILED + [r"HUP supersedes"])
    finish(server)
