"""metrics_bind: the master's /metrics (Prometheus) and /healthz, with real servers
(statsd: test_metrics.py)."""
import http.client
import json
import re
import signal
import socket
import time

import psutil
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from services import free_port


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def scrape(port):
    """{(name, labels as a sorted tuple): value} of one scrape, parsed by
    prometheus_client's own parser."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def answers(port, path):
    try:
        return get(port, path)
    except OSError:
        return None


def metrics_config(port, extra=""):
    return 'metrics_bind = "127.0.0.1:%d"\n%s' % (port, extra)


def test_metrics_parse_and_agree_with_the_server(make_server):
    port = free_port()
    server = make_server(workers=3, config=metrics_config(port)).start()
    wait_for(lambda: scrape(port).get(("smartspawn_workers", (("state", "serving"),))) == 3,
             what="3 serving workers in /metrics")
    samples = scrape(port)
    by_role = {role: samples[("smartspawn_memory_pss_bytes", (("role", role),))]
               for role in ("master", "preloader", "worker", "template", "standby")}
    assert by_role["master"] > 0 and by_role["preloader"] > 0 and by_role["worker"] > 0
    assert by_role["template"] == 0  # no refork yet
    assert samples[("smartspawn_processes", (("role", "worker"),))] == 3
    assert samples[("smartspawn_server_memory_pss_bytes", ())] == sum(by_role.values())
    assert samples[("smartspawn_workers_target", ())] == 3
    assert samples[("smartspawn_reforks_total", ())] == 0
    assert samples[("smartspawn_spawn_latency_seconds_count", ())] >= 3
    for name in ("smartspawn_oob_gc_collections_total", "smartspawn_oob_gc_seconds_total"):
        assert (name, ()) in samples
    # The master's listening socket stays in the master: no child holds the port.
    for pid, _title in server.children():
        try:
            ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")}
        except psutil.NoSuchProcess:
            continue
        assert port not in ports, pid
    assert get(port, "/nothing")[0] == 404
    # INT: gunicorn stops twice (its handler, then halt), the metrics server once.
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.log()


def test_healthz_is_503_while_the_app_imports_then_200(make_server):
    port = free_port()
    server = make_server("slow_import.py", config=metrics_config(port),
                         env={"IMPORT_SECONDS": "4"}).start(wait=False)
    status, body = wait_for(lambda: answers(port, "/healthz"), what="/healthz to answer")
    assert status == 503 and body.startswith("starting"), body
    assert not server.worker_pids()
    server.wait_ready()
    status, body = wait_for(lambda: (lambda a: a if a[0] == 200 else None)(
        get(port, "/healthz")), what="/healthz 200")
    assert re.match(r"ok: \d workers serve \(generation 1\)", body), body


def test_a_refork_counts_and_its_workers_are_timed(make_server):
    port = free_port()
    server = make_server(workers=2, config=metrics_config(port, "fork_worker = True\n"))
    server.start()
    wait_for(lambda: scrape(port).get(("smartspawn_workers", (("state", "serving"),))) == 2,
             what="2 serving workers in /metrics")
    spawned = scrape(port)[("smartspawn_spawn_latency_seconds_count", ())]
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    samples = wait_for(lambda: (lambda s: s if s[("smartspawn_reforks_total", ())] == 1
                                else None)(scrape(port)), what="reforks_total 1")
    assert samples[("smartspawn_generation", ())] == 2
    assert samples[("smartspawn_processes", (("role", "template"),))] == 1
    assert samples[("smartspawn_memory_pss_bytes", (("role", "template"),))] > 0
    assert samples[("smartspawn_spawn_latency_seconds_count", ())] >= spawned + 2
    assert get(port, "/healthz")[0] == 200


# Records the number of the master's threads at each fork it makes.
THREADS_AT_FORK = '''
import json, os, threading
MASTER = os.getpid()

def at_fork():
    if os.getpid() == MASTER:
        with open(os.path.join(os.environ["TEST_DIR"], "forks.jsonl"), "a") as f:
            f.write(json.dumps([t.name for t in threading.enumerate()]) + "\\n")

os.register_at_fork(before=at_fork)

def pre_fork(server, worker):
    # A fork smartspawn does not make: the at-fork handlers stop the metrics thread.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
'''


def test_the_master_never_forks_with_the_metrics_thread_running(make_server):
    """Direct spawning forks every worker from the master, while /metrics is scraped
    without a pause: at each fork (smartspawn's, and a hook's own os.fork()) the master
    has only its main thread, and /metrics answers after."""
    port = free_port()
    server = make_server(workers=2, config=metrics_config(
        port, 'spawn_method = "direct"\n' + THREADS_AT_FORK)).start()
    scrapes = 0
    deadline = time.monotonic() + 3
    for _ in range(3):  # TTIN and TTOU: more forks while scraping
        server.signal(signal.SIGTTIN)
        while time.monotonic() < deadline:
            scrape(port)
            scrapes += 1
        deadline = time.monotonic() + 1
    wait_for(lambda: len(server.worker_pids()) == 5, what="5 workers")
    forks = [json.loads(line) for line in (server.root / "forks.jsonl").read_text().split("\n")
             if line]
    assert len(forks) >= 10  # 5 workers, each with pre_fork's own fork
    assert all(threads == ["MainThread"] for threads in forks), forks
    assert scrapes > 10
    wait_for(lambda: scrape(port)[("smartspawn_processes", (("role", "worker"),))] == 5,
             what="5 workers in /metrics")


MULTIPROCESS_HOOKS = '''
import sys
from prometheus_client import multiprocess

fork_worker = True

def post_worker_init(worker):
    sys.modules["app"].started()

def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
'''


def test_app_metrics_in_multiprocess_mode_forget_every_process_that_ended(
        make_server, tmp_path):
    """The app's live gauge (prometheus_client's multiprocess mode) counts the processes
    that are alive only: through two reforks, the replaced workers and the first template
    (retired by the second) are marked dead by the child_exit hook. The master's
    /metrics shows the app's metrics too."""
    port = free_port()
    files = tmp_path / "prometheus"
    files.mkdir()
    server = make_server("multiproc.py", workers=2,
                         config=metrics_config(port, MULTIPROCESS_HOOKS),
                         env={"PROMETHEUS_MULTIPROC_DIR": str(files)}).start()
    for generation in (2, 3):
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation %s \(URG\) done" % generation, timeout=30)

    def live_pids_agree():
        pids = {int(m.group(1)) for f in files.iterdir()
                if (m := re.fullmatch(r"gauge_livesum_(\d+)\.db", f.name))}
        alive = {pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
        return pids == alive and pids
    wait_for(live_pids_agree, what="only live processes' gauge files")
    workers = server.worker_pids()
    assert len(workers) == 2
    # The two workers and the template (it served, and is alive): each set it to 1.
    wait_for(lambda: scrape(port).get(("app_worker_up", ())) == 3,
             what="app_worker_up 3 in the master's /metrics")


def test_a_port_that_cannot_be_bound_stops_the_start(make_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = make_server(config=metrics_config(port)).start(wait=False)
        assert server.wait_exit() == 1
    log = server.log()
    assert "Error: metrics_bind='127.0.0.1:%d': cannot listen there: " % port in log, log
    assert "Listening at" not in log and not server.pidfile.exists()


def new_master_has_a_worker(master):
    for child in master.children(recursive=True):
        try:
            if "worker [" in " ".join(child.cmdline()):
                return True
        except psutil.NoSuchProcess:
            pass  # a standby handed in, a process that ended meanwhile
    return False


def test_after_usr2_the_new_master_serves_once_the_old_one_has_gone(make_server):
    """The old master holds the port until it exits; the new master (re-exec'd by
    gunicorn's USR2) binds it then."""
    port = free_port()
    server = make_server(workers=1, config=metrics_config(port)).start()
    old_workers = set(server.worker_pids())
    server.signal(signal.SIGUSR2)
    new_pidfile = server.pidfile.with_name(server.pidfile.name + ".2")
    new_master = psutil.Process(int(wait_for(
        lambda: new_pidfile.exists() and new_pidfile.read_text().strip(),
        what="the new master's pidfile")))
    try:
        wait_for(lambda: new_master_has_a_worker(new_master), what="the new master's worker")
        wait_for(lambda: get(port, "/healthz")[0] == 200, what="the old master's /healthz")
        assert server.stop() == 0
        assert server.alive(old_workers) == []
        status, body = wait_for(lambda: (lambda a: a if a and a[0] == 200 else None)(
            answers(port, "/healthz")), what="the new master's /healthz")
        assert scrape(port)[("smartspawn_processes", (("role", "master"),))] == 1
    finally:
        new_master.terminate()
        new_master.wait(20)
