"""fork_safety: what the preloader would share with every worker, reported before it forks."""
import re
import signal
import socket

import pytest

from conftest import wait_for


@pytest.fixture
def peer():
    """A loopback listener standing in for a database or a cache."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_connected_socket_at_import_is_warned_about_naming_peer_and_hook(make_server, peer):
    server = make_server(app_file="forkunsafe.py", env={"PEER_PORT": str(peer)}).start()
    server.wait_log(r"fork safety \(preloader\): fd \d+ is a socket connected to "
                    r"tcp:127\.0\.0\.1:%d; .* close it in the on_preload hook" % peer)
    assert server.get_ok()


def test_closing_it_in_on_preload_silences_the_warning(make_server, peer):
    config = "def on_preload(preloader):\n    import app\n    app.CONNECTION.close()\n"
    server = make_server(app_file="forkunsafe.py", config=config,
                         env={"PEER_PORT": str(peer)}).start()
    assert "fork safety" not in server.log()


def test_thread_started_at_import_is_reported(make_server):
    server = make_server(app_file="forkunsafe.py", env={"START_THREAD": "1"}).start()
    server.wait_log(r"fork safety \(preloader\): 1 other thread\(s\) running "
                    r"\('cache-refresher'\): a thread does not survive fork, .* stop it in "
                    r"the on_preload hook \(and start one per worker in post_fork\)")


def test_a_thread_threading_does_not_know_is_named_by_the_kernel(make_server):
    server = make_server(app_file="forkunsafe.py", env={"NATIVE_THREAD": "1"}).start()
    server.wait_log(r"fork safety \(preloader\): 1 other thread\(s\) running \(native '.+'\)")


# From Python 3.12, os.fork() with threads running warns (DeprecationWarning), naming none.
PYTHON_WARNING = "is multi-threaded, use of fork() may lead to deadlocks"


@pytest.mark.parametrize("fork_safety", ["warn", "strict"])
def test_a_thread_started_after_the_check_is_reported_at_the_next_fork(make_server,
                                                                       fork_safety):
    config = ('fork_safety = "%s"\n' % fork_safety
              + "def on_preload(preloader):\n    import app\n    app.start_after_first_fork()\n")
    server = make_server(app_file="forkunsafe.py", workers=1, config=config,
                         env={"PYTHONWARNINGS": "always"}).start()
    # The standby forked at start became worker 1; the next standby's fork is the next fork.
    preloader = server.preloader_pid()
    thread = r"1 other thread\(s\) running \('late-poller'\): a thread does not survive fork"
    if fork_safety == "warn":
        server.wait_log(r"WARNING\] fork safety \(preloader\): " + thread)
        server.signal(signal.SIGTTIN)
        wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")
    else:
        server.wait_log(r"preloader: fork failed: fork_safety = 'strict': the preloader "
                        r"refuses to fork: " + thread)
        assert server.get_ok()  # worker 1 serves; the master will ask for the next one
    assert len(re.findall(thread, server.log())) == 1, server.log()  # one report
    # Python's nameless DeprecationWarning (3.12+) is not printed for the preloader's forks.
    assert "This process (pid=%d) is multi-threaded" % preloader not in server.log()


def test_strict_refuses_to_start(make_server, peer):
    server = make_server(app_file="forkunsafe.py", config='fork_safety = "strict"\n',
                         env={"PEER_PORT": str(peer)}).start(wait=False)
    assert server.wait_exit() == 3
    log = server.log()
    assert "fork_safety = 'strict': the preloader refuses to fork" in log
    assert "tcp:127.0.0.1:%d" % peer in log
    assert server.alive(server.seen_pids) == []


def test_off_checks_nothing(make_server, peer):
    server = make_server(app_file="forkunsafe.py", config='fork_safety = "off"\n',
                         env={"PEER_PORT": str(peer), "START_THREAD": "1"}).start()
    assert "fork safety" not in server.log()


def test_a_log_file_is_only_noted_at_debug_level(make_server):
    server = make_server(args=["--access-logfile", "access.log"]).start()
    server.wait_log(r"DEBUG\] fork safety \(preloader\): fd \d+ is .*/access\.log, shared")
    assert "WARNING] fork safety" not in server.log()
