"""fork_safety: what the preloader would share with every worker, reported before it forks."""
import concurrent.futures
import importlib.util
import os
import re
import signal
import socket
import time

import pytest

from conftest import APPS, wait_for


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
                    r"\('cache-refresher' \(time\.sleep\)\): a thread does not survive fork, "
                    r".* stop it in the on_preload hook \(and start one per worker in post_fork\)")


def test_a_thread_threading_does_not_know_is_named_by_the_kernel(make_server):
    server = make_server(app_file="forkunsafe.py", env={"NATIVE_THREAD": "1"}).start()
    server.wait_log(r"fork safety \(preloader\): 1 other thread\(s\) running "
                    r"\(native '.+' \(tid \d+\)\)")


# From Python 3.12, os.fork() with threads running warns (DeprecationWarning), naming none.
PYTHON_WARNING = "is multi-threaded, use of fork() may lead to deadlocks"


LATE_THREAD = "def on_preload(preloader):\n    import app\n    app.start_after_first_fork()\n"
THREAD = (r"1 other thread\(s\) running \('late-poller' \(time\.sleep\)\): a thread does not "
          r"survive fork")


def test_a_thread_started_after_the_check_is_reported_at_the_next_fork(make_server):
    server = make_server(app_file="forkunsafe.py", workers=1, config=LATE_THREAD,
                         env={"PYTHONWARNINGS": "always"}).start()
    # The standby forked at start became worker 1; the next standby's fork is the next fork.
    preloader = server.preloader_pid()
    server.wait_log(r"WARNING\] fork safety \(preloader\): " + THREAD)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")
    assert len(re.findall(THREAD, server.log())) == 1, server.log()  # once per set of threads
    # Python's nameless DeprecationWarning (3.12+) is not printed for the preloader's forks.
    assert "This process (pid=%d) is multi-threaded" % preloader not in server.log()


def test_strict_ends_a_preloader_that_would_fork_with_a_thread_started_since_the_check(
        make_server):
    server = make_server(app_file="forkunsafe.py", workers=2,
                         config='fork_safety = "strict"\n' + LATE_THREAD).start()
    server.wait_log(r"ERROR\] fork_safety = 'strict': the preloader refuses to fork: " + THREAD,
                    timeout=30)
    # It exits (no fork with the thread, and no spawn loop); another preloader takes over.
    server.wait_log(r"Started preloader \(pid: \d+, gen=2\)", timeout=30)
    wait_for(lambda: len(server.worker_pids()) == 2, timeout=30, what="two workers")
    assert server.get_ok()
    time.sleep(2)
    refusals = len(re.findall("refuses to fork", server.log()))
    # Two lines (the preloader's, the master's) per preloader that had to fork twice: a
    # few, where the spawn loop this guards against made thousands.
    assert refusals <= 8, server.log()


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
    server = make_server(app_file="forkunsafe.py", env={"OPEN_FILE": "1"}).start()
    server.wait_log(r"DEBUG\] fork safety \(preloader\): fd \d+ is .*/app\.log, shared")
    assert "WARNING] fork safety" not in server.log()


def test_a_pipe_the_app_opened_is_warned_about(make_server):
    server = make_server(app_file="forkunsafe.py", env={"OPEN_PIPE": "1"}).start()
    server.wait_log(r"WARNING\] fork safety \(preloader\): fd \d+ is a pipe \(pipe:\[\d+\]\); "
                    r"it would be shared with every worker: close it in the on_preload hook")


def test_what_gunicorn_inherited_is_noted_once_never_blamed(make_server):
    """A pipe from what started gunicorn (a CI runner, a supervisor) and gunicorn's own
    access log: open before the import, not the app's, even under strict; said once per
    master, at debug (not again by a template, nor by a HUP's preloader)."""
    read_end, write_end = os.pipe()
    try:
        server = make_server(config='fork_safety = "strict"\nfork_worker = True\n',
                             args=["--access-logfile", "access.log"])
        server.start(pass_fds=(write_end,))
        inherited = r"fd %d \(pipe:\[\d+\]\) was open before the app was imported: " \
                    r"inherited from the master, or from what started gunicorn" % write_end
        server.wait_log(r"DEBUG\] fork safety \(preloader\): " + inherited)
        server.wait_log(r"DEBUG\] fork safety \(preloader\): fd \d+ \(/\S+/access\.log\) was "
                        r"open before the app was imported")
        server.signal(signal.SIGURG)  # the template has the pipe too: said once, by the preloader
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
        server.signal(signal.SIGHUP)  # a new preloader, forked from the same master
        server.wait_log(r"Reload to generation 3 \(HUP\) done", timeout=20)
        assert len(re.findall(inherited, server.log())) == 1
        assert "WARNING] fork safety" not in server.log()
        # As under plain gunicorn, whose workers have it too: a worker has it.
        worker = server.worker_pids()[0]
        assert os.readlink("/proc/%d/fd/%d" % (worker, write_end)).startswith("pipe:")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_templates_thread_is_reported_even_if_the_preloader_reported_its_like(make_server):
    # Threads do not survive fork: the template's 'cache-refresher' is a new one, started
    # in post_fork, and as unsafe as the preloader's was.
    config = ("fork_worker = True\n"
              "def post_fork(server, worker):\n"
              "    import threading, time\n"
              "    threading.Thread(target=time.sleep, args=(3600,), name='cache-refresher',\n"
              "                     daemon=True).start()\n")
    server = make_server(app_file="forkunsafe.py", config=config,
                         env={"START_THREAD": "1"}).start()
    said = r"WARNING\] fork safety \(%s\): 1 other thread\(s\) running \('cache-refresher' "
    server.wait_log(said % "preloader")
    server.signal(signal.SIGURG)
    server.wait_log(said % "template", timeout=20)


def test_a_connected_udp_socket_is_only_noted(make_server):
    # One datagram at a time (a statsd client): safe to share, as gunicorn's own statsd is.
    server = make_server(app_file="forkunsafe.py", config='fork_safety = "strict"\n',
                         env={"UDP_PORT": "8125"}).start()
    server.wait_log(r"DEBUG\] fork safety \(preloader\): fd \d+ is a UDP socket connected to "
                    r"127\.0\.0\.1:8125, shared with every worker")
    assert server.get_ok()


@pytest.mark.parametrize("mode", ["warn", "strict"])
def test_a_check_that_fails_does_not_stop_a_boot_unless_strict(make_server, mode):
    server = make_server(app_file="forkunsafe.py", config='fork_safety = "%s"\n' % mode,
                         env={"ODD_THREAD": "1"})
    if mode == "warn":
        server.start()
        server.wait_log(r"ERROR\] fork safety \(preloader\): the check failed; forking anyway")
        assert server.get_ok()
    else:
        server.start(wait=False)
        assert server.wait_exit() == 3
        assert re.search(r"fork_safety = 'strict': the preloader refuses to fork: the check "
                         r"failed: RuntimeError\('not to be looked at'\)", server.log())


# -- files the app opened at import: one offset for every worker ----------------------------

def file_reader():
    """tests/apps/file_reader.py, imported here to write its data."""
    spec = importlib.util.spec_from_file_location("file_reader", APPS / "file_reader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REOPEN_IN_POST_FORK = '''
def post_fork(server, worker):
    import app
    app.reopen()
'''

CLOSE_IN_ON_PRELOAD = REOPEN_IN_POST_FORK + '''
def on_preload(preloader):
    import app
    app.kept.close()
'''


def reader_server(make_server, reader, **kwargs):
    server = make_server(app_file="file_reader.py", workers=4, env={"READER": reader},
                         **kwargs)
    file_reader().write_data(server.root)
    return server


def wrong_lookups(server, clients=6, requests=80, lookups=50):
    """(wrong, all) lookups of `clients` concurrent clients, on kept-alive connections."""
    def client():
        wrong = 0
        for _ in range(requests):
            wrong += server.get_json("/?%d" % lookups, timeout=30)["wrong"]
        return wrong
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        wrong = sum(pool.map(lambda _: client(), range(clients)))
    return wrong, clients * requests * lookups


@pytest.mark.parametrize("reader", ["index", "zip"])
def test_a_file_read_at_import_is_named_and_right_once_reopened_in_each_worker(make_server,
                                                                              reader):
    """A file the app opened at import and reads with seek() + read() (its own index, a
    kept zipfile.ZipFile): every worker has its own offset under plain gunicorn, so no
    lookup is wrong. Forked from the preloader, they share one: fork safety names the file
    with the fix, and with the fix (reopened in post_fork) no lookup is wrong either."""
    plain = reader_server(make_server, reader, worker_class="sync").start()
    assert wrong_lookups(plain)[0] == 0
    plain.teardown()

    shared = reader_server(make_server, reader).start()
    shared.wait_log(r"WARNING\] fork safety \(preloader\): fd \d+ is \S+/records\.%s, open "
                    r"for reading: every worker would share its offset.*close it in the "
                    r"on_preload hook and open it in each worker \(post_fork, or on first "
                    r"use\).*os\.pread\(\)" % ("zip" if reader == "zip" else "bin"))
    wrong, lookups = wrong_lookups(shared)
    assert wrong > 0, "%d lookups, none wrong: the test cannot tell a fix" % lookups
    shared.teardown()

    fixed = reader_server(make_server, reader, config=REOPEN_IN_POST_FORK).start()
    assert wrong_lookups(fixed)[0] == 0


@pytest.mark.parametrize("reader", ["index", "zip"])
def test_strict_refuses_a_file_read_at_import_and_starts_once_it_is_closed(make_server,
                                                                          reader):
    """fork_safety = "strict": the preloader refuses to fork with the app's file open for
    reading (exit 3, naming it and the fix); closed in on_preload and opened in each
    worker, the server starts and every lookup is right."""
    refused = reader_server(make_server, reader, config='fork_safety = "strict"\n')
    refused.start(wait=False)
    assert refused.wait_exit() == 3
    assert re.search(r"fork_safety = 'strict': the preloader refuses to fork: fd \d+ is "
                     r"\S+/records\.(bin|zip), open for reading.*post_fork", refused.log())

    fixed = reader_server(make_server, reader,
                          config='fork_safety = "strict"\n' + CLOSE_IN_ON_PRELOAD).start()
    assert wrong_lookups(fixed)[0] == 0
    assert "WARNING] fork safety" not in fixed.log()


def test_pread_needs_no_hook(make_server):
    """os.pread() moves no offset: a file read only with it is right in every worker (fork
    safety cannot tell how a file is read: it still names it)."""
    server = reader_server(make_server, "pread").start()
    assert wrong_lookups(server)[0] == 0


def test_a_file_from_what_started_gunicorn_and_gunicorns_logs_are_not_the_apps(make_server,
                                                                             tmp_path):
    """A regular file open for reading that gunicorn inherited (a supervisor's, a shell's
    `3< file`) and gunicorn's own log files: plain gunicorn's workers share them too; not
    blamed, even under strict."""
    inherited = tmp_path / "inherited.txt"
    inherited.write_text("from what started gunicorn\n")
    fd = os.open(inherited, os.O_RDONLY)
    try:
        server = make_server(config='fork_safety = "strict"\n',
                             args=["--error-logfile", "error.log",
                                   "--access-logfile", "access.log"])
        server.log_path = server.root / "error.log"
        server.start(pass_fds=(fd,))
        server.wait_log(r"DEBUG\] fork safety \(preloader\): fd %d \(\S+/inherited\.txt\) was "
                        r"open before the app was imported" % fd)
        assert "WARNING] fork safety" not in server.log()
    finally:
        os.close(fd)
