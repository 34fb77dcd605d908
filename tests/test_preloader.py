"""The smart preloader tier, against the real gunicorn command."""
import mmap
import os
import signal
import time

import psutil
import pytest

from conftest import LoadLoop, wait_for


def test_app_imported_once_in_preloader_and_workers_are_master_children(make_server):
    server = make_server(workers=4).start()
    preloader = server.preloader_pid()
    assert server.lines("imports.txt") == [str(preloader)]
    assert psutil.Process(preloader).ppid() == server.pid
    workers = server.worker_pids()
    assert len(workers) == 4
    for pid in workers:
        assert psutil.Process(pid).ppid() == server.pid
    served = {server.get_json()["pid"] for _ in range(40)}
    assert served <= set(workers)
    assert server.stop() == 0


def test_killed_worker_is_replaced_from_the_preloader(make_server):
    server = make_server(workers=2).start()
    preloader = server.preloader_pid()
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
             what="a replacement worker")
    assert server.lines("imports.txt") == [str(preloader)]
    assert server.preloader_pid() == preloader
    assert server.get_json()["pid"] in server.worker_pids()


def test_hup_serves_new_code_with_zero_failed_requests(make_server):
    server = make_server(workers=3).start()
    old_preloader, old_workers = server.preloader_pid(), server.worker_pids()
    app_py = server.root / "app.py"
    with LoadLoop(server) as load:
        app_py.write_text(app_py.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        server.signal(signal.SIGHUP)
        wait_for(lambda: {server.get_json()["version"] for _ in range(12)} == {"v2"},
                 timeout=20, what="only v2 to be served")
        wait_for(lambda: not set(old_workers) & set(server.worker_pids())
                 and len(server.worker_pids()) == 3, what="the old generation to retire")
        served = load.ok
        wait_for(lambda: load.ok > served + 20, what="traffic to the new generation")
    assert load.failures == []
    assert load.ok > 20
    new_preloader = server.preloader_pid()
    assert new_preloader != old_preloader
    assert not psutil.pid_exists(old_preloader) or \
        psutil.Process(old_preloader).status() == psutil.STATUS_ZOMBIE
    assert server.lines("imports.txt") == [str(old_preloader), str(new_preloader)]
    server.wait_log(r"Generation 2 is ready")


def test_killed_preloader_is_restarted_while_workers_serve(make_server):
    server = make_server(workers=2).start()
    old = server.preloader_pid()
    with LoadLoop(server) as load:
        os.kill(old, signal.SIGKILL)
        # A new generation number: it imports the code on disk now.
        new = int(server.wait_log(r"Started preloader \(pid: (?!%d\b)(\d+), gen=2\)"
                                  % old).group(1))
        server.wait_log(r"preloader \(pid: %d, gen=2\) loaded the app" % new)
    assert load.failures == []
    # Spawns now come from the new preloader.
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 3, what="a third worker")
    server.wait_log(r"Booting worker with pid: \d+ \(gen=2 from preloader\)")
    assert server.lines("imports.txt") == [str(old), str(new)]


def test_sigkill_of_master_leaves_no_process_behind(make_server):
    server = make_server(workers=3).start()
    tree = wait_for(lambda: (lambda t: t if len(t) == 5 else None)(
        [pid for pid, _ in server.children()]), what="preloader, standby, 3 workers")
    server.signal(signal.SIGKILL)
    server.wait_exit()
    assert server.alive(tree, grace=10.0) == []


def test_ttin_ttou_add_and_remove_workers(make_server):
    server = make_server(workers=2).start()
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 3, what="3 workers")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers")
    server.signal(signal.SIGTTOU)  # one at a time: pending signals of one kind coalesce
    wait_for(lambda: len(server.worker_pids()) == 1, what="1 worker")
    assert len(server.lines("imports.txt")) == 1
    assert server.get_ok()


def test_max_requests_recycles_workers_from_the_preloader(make_server):
    server = make_server(workers=2, args=["--max-requests", "5"]).start()
    first = set(server.worker_pids())
    # A worker past max_requests serves until its replacement does: requests may keep
    # going to one worker for a while, so send them until both first workers are gone.
    for _ in range(500):
        assert server.request()[0] == 200
        if not first & set(server.worker_pids()):
            break
    wait_for(lambda: not first & set(server.worker_pids()) and
             len(server.worker_pids()) == 2, what="recycled workers")
    assert len(server.lines("imports.txt")) == 1


def test_timeout_kills_a_hung_forked_worker(make_server):
    server = make_server(workers=2, args=["--timeout", "2"]).start()
    before = set(server.worker_pids())
    try:
        server.request("/hang", timeout=1.0)
    except OSError:
        pass
    server.wait_log(r"WORKER TIMEOUT", timeout=15)
    wait_for(lambda: len(set(server.worker_pids()) - before) == 1
             and len(server.worker_pids()) == 2, what="the hung worker's replacement")
    assert server.get_ok()


def test_graceful_term_lets_in_flight_requests_finish(make_server):
    server = make_server(workers=1, args=["--graceful-timeout", "10"]).start()
    result = {}

    def slow():
        result["response"] = server.request("/sleep?1.5", timeout=10)

    import threading
    thread = threading.Thread(target=slow)
    thread.start()
    server.wait_log(r"GET /sleep")  # the request is in flight in the only worker
    assert server.stop(signal.SIGTERM) == 0
    thread.join(10)
    assert result["response"][0] == 200


def test_quick_int_stops_everything(make_server):
    server = make_server(workers=2).start()
    tree = [pid for pid, _ in server.children()]
    assert server.stop(signal.SIGINT) == 0
    assert server.alive(tree) == []


def test_threads_serve_concurrently_in_one_worker(make_server):
    server = make_server(workers=1, args=["--threads", "4"]).start()
    server.wait_log(r"Using worker: smartspawn.Worker")
    import concurrent.futures
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: server.request("/sleep?1", timeout=10), range(4)))
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 4
    assert elapsed < 3.0, "4 one-second requests took %.1fs in a 4-thread worker" % elapsed


def test_direct_spawn_method_imports_in_every_worker(make_server):
    server = make_server(workers=3, config='spawn_method = "direct"\n').start()
    assert server.preloader_pids() == []
    workers = server.worker_pids()
    wait_for(lambda: sorted(map(int, server.lines("imports.txt"))) == workers,
             what="each worker to import the app")
    assert str(server.pid) not in server.lines("imports.txt")


def test_preload_flag_still_never_imports_in_master(make_server):
    server = make_server(workers=2, args=["--preload"]).start()
    assert server.lines("imports.txt") == [str(server.preloader_pid())]
    server.wait_log(r"--preload is not needed")


def test_reload_flag_falls_back_to_direct_with_one_warning(make_server):
    server = make_server(workers=1, args=["--reload"]).start()
    assert server.log().count("falling back to direct spawning") == 1
    assert server.preloader_pids() == []


def test_killed_standby_is_replaced_and_spawns_still_work(make_server):
    server = make_server(workers=1).start()
    (standby,) = wait_for(server.standby_pids, what="a standby worker")
    os.kill(standby, signal.SIGKILL)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")
    wait_for(lambda: server.standby_pids() and standby not in server.standby_pids(),
             what="a new standby")
    assert len(server.lines("imports.txt")) == 1
    assert "Traceback" not in server.log()


def test_a_standby_that_dies_as_it_starts_is_not_forked_again_and_again(make_server):
    # Its replacement is forked for the next spawn request, not at once in a loop.
    server = make_server(workers=1, config='''
def on_preload(preloader):
    from gunicorn_smartspawn.spawner import prefault

    def broken(*args, **kwargs):
        raise RuntimeError("the standby broke")

    prefault.take_faults_of = broken
''').start()
    server.wait_log("RuntimeError: the standby broke")
    time.sleep(1.0)  # a loop would fork hundreds meanwhile
    assert server.log().count("RuntimeError: the standby broke") == 1
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")
    assert server.get_ok()


def test_a_stopped_standby_does_not_stop_spawning_for_good(make_server):
    # It holds a copy of the preloader's channel and never reads the request: the master
    # kills the preloader as stuck (SPAWN_TIMEOUT), and its standby with it, else the
    # channel's EOF never comes and no new preloader is started.
    server = make_server(workers=1).start()
    (standby,) = wait_for(server.standby_pids, what="a standby worker")
    os.kill(standby, signal.SIGSTOP)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, timeout=30, what="a second worker")
    assert standby not in server.worker_pids()


def test_a_spawn_request_stops_the_standbys_copy_of_the_previous_workers_pages(make_server):
    # The page map of a large mapping barely used takes the standby seconds to read
    # (spawner/prefault.py): a spawn request must not wait for it.
    try:
        mmap.mmap(-1, 256 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000).close()
    except OSError as exc:  # vm.overcommit_memory = 2: MAP_NORESERVE is not honoured
        pytest.skip("256 GiB cannot be reserved here: %s" % exc)
    server = make_server(app_file="reserving.py", workers=1).start()
    (worker,) = server.worker_pids()
    # The first standby became the worker (same pid): the next one copies its pages.
    wait_for(lambda: [pid for pid in server.standby_pids() if pid != worker],
             what="the standby forked after the first worker")
    server.signal(signal.SIGTTIN)
    server.wait_log(r"the pages of worker %s copied: a spawn request came" % worker)
    wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")


def test_what_the_preloader_allocated_after_its_first_fork_is_frozen_in_later_workers(
        make_server):
    # gc.freeze() right before every fork, not only once: else each later worker's
    # collector walks (and un-shares) what the preloader allocated since.
    server = make_server(app_file="freezing.py", workers=1).start()
    for workers in (2, 3):  # one at a time: two signals at once may arrive as one
        server.signal(signal.SIGTTIN)
        wait_for(lambda n=workers: len(server.worker_pids()) == n, what="%d workers" % workers)
    seen = {}
    wait_for(lambda: seen.update({b["pid"]: b for b in [server.get_json()]}) or len(seen) == 3,
             what="an answer from each worker")
    later = [body for body in seen.values() if body["inherited"]]
    assert later, seen  # the second and third workers were forked after an allocation
    assert all(body["frozen"] == body["inherited"] for body in later), seen


def test_garbage_is_collected_before_the_heap_is_frozen(make_server):
    # A frozen object is never collected: freezing first would keep it for good.
    server = make_server(app_file="freezing.py", workers=1).start()
    assert server.get_json()["garbage_freed"]


def test_the_next_standby_copies_the_pages_the_worker_before_it_wrote(make_server):
    # spawner/prefault.py: the standby forked after a hand-over takes ahead the
    # copy-on-write faults its worker-to-be would take while it boots.
    server = make_server(workers=1).start()
    (worker,) = server.worker_pids()
    found = server.wait_log(r"Standby \(pid: (\d+)\): the pages of worker (\d+) copied: (\d+)\n")
    standby, source, pages = map(int, found.groups())
    assert source == worker and pages > 0
    server.signal(signal.SIGTTIN)
    wait_for(lambda: standby in server.worker_pids(), what="the standby to become the worker")


def test_the_standby_reads_the_spawn_request_itself(make_server):
    # One process woken per spawn, not two: with the preloader stopped, its standby
    # still becomes the worker a TTIN asks for.
    server = make_server(workers=1).start()
    (standby,) = wait_for(server.standby_pids, what="a standby worker")
    preloader = server.preloader_pid()
    os.kill(preloader, signal.SIGSTOP)
    try:
        server.signal(signal.SIGTTIN)
        wait_for(lambda: standby in server.worker_pids(), what="the standby to become a worker")
    finally:
        os.kill(preloader, signal.SIGCONT)
    wait_for(lambda: [p for p in server.standby_pids() if p != standby], what="a new standby")
    assert server.get_ok()
