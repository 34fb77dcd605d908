"""gc_freeze = "immortal": the preloaded heap made immortal, so reading it copies no page.

The servers run on the interpreter running these tests (scripts/test-on VERSION runs
them on another); where it cannot work, only the fallback is tested.
"""
import json
import re
import signal
import subprocess
import sys

import pytest

from conftest import wait_for
from gunicorn_smartspawn.forksafety import immortal

MIB = 1024 * 1024
WHY_NOT = immortal.unsupported()
supported = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))
IMMORTAL = 'gc_freeze = "immortal"\n'
PASS_LINE = r"%s \(pid: (\d+), gen=%d\) made (\d+) objects immortal in ([\d.]+)s"


def make_immortal_server(make_server, config=IMMORTAL, **kwargs):
    return make_server(app_file="immortal.py", config=config, **kwargs)


@supported
def test_a_worker_reads_the_preloaded_heap_without_copying_it(make_server):
    # Side by side: the same app, gc_freeze = True and "immortal".
    frozen = make_immortal_server(make_server, config="gc_freeze = True\n").start()
    immortal_ = make_immortal_server(make_server).start()
    match = immortal_.wait_log(PASS_LINE % ("preloader", 1))
    assert int(match.group(2)) > 1_000_000  # 200,000 records of 5 objects, and the rest
    assert frozen.get_json("/immortal")["records"] == 0.0
    answer = immortal_.get_json("/immortal")
    assert answer["records"] == answer["keys"] == answer["code"] == 1.0, answer
    grew_frozen = frozen.get_json("/read")["grew"]
    grew_immortal = immortal_.get_json("/read")["grew"]
    assert grew_frozen > 20 * MIB, grew_frozen
    assert grew_immortal <= 2 * MIB, (grew_immortal, grew_frozen)


def master_private_share(server):
    """The share of the master's anonymous memory that is its own (written since the
    preloader's fork, by either), from /proc/PID/smaps_rollup."""
    fields = {}
    with open("/proc/%d/smaps_rollup" % server.pid) as rollup:
        for parts in map(str.split, rollup):
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Private_Dirty"] / fields["Anonymous"]


@supported
def test_the_master_makes_its_own_heap_immortal_so_the_preloader_shares_it(make_server):
    """Otherwise the preloader's pass writes each object it inherits from the master,
    and every page of the master's heap exists twice. Side by side with True, whose
    preloader's full collection writes the collector's header of each of them."""
    frozen = make_immortal_server(make_server, config="gc_freeze = True\n").start()
    immortal_ = make_immortal_server(make_server).start()
    log = immortal_.wait_log(PASS_LINE % ("preloader", 1)).string
    shares = master_private_share(immortal_), master_private_share(frozen)
    print("the master's own share of its anonymous memory: immortal %.2f, True %.2f"
          % shares)
    assert shares[0] < shares[1], shares  # without the master's pass: 0.9 and 0.7
    # The master's own lines, in its order (the preloader may log between the two).
    master = [line for line in log.splitlines() if "] [%d] [" % immortal_.pid in line]
    assert re.search(r"The master made its \d+ objects immortal in [\d.]+s\n.*"
                     r"Started preloader", "\n".join(master)), log


def test_the_master_reads_the_arbiters_own_attributes_before_it_forks_the_preloader(
        make_server):
    """hookstate parses gunicorn's and smartspawn's source for them: at the first spawn,
    after the fork, the objects it dropped left 2.9 MiB of arenas to the master alone
    (docs/benchmarks/immortal-profile.md). Read before, the preloader inherits them."""
    server = make_immortal_server(make_server, config="").start()
    assert server.get_json("/inherited")["native_attributes"] == 1


@supported
def test_after_a_refork_the_templates_warmed_cache_is_immortal_in_new_workers(make_server):
    server = make_immortal_server(make_server, config=IMMORTAL + "fork_worker = True\n",
                                  workers=2).start()
    # Every worker fills its own cache on its first /warm; the candidate is one of them.
    wait_for(lambda: len({server.get_json("/warm")["pid"] for _ in range(10)}) == 2,
             what="both workers warmed")
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    match = server.wait_log(PASS_LINE % ("template", 2))
    template = int(match.group(1))
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers")
    for _ in range(6):
        answer = server.get_json("/immortal")
        assert answer["cache_from"] == template, answer  # inherited, not filled again
        # The template's pass reached the strings it put in a dict the preloader had
        # made immortal (empty) already.
        assert answer["cache"] == answer["records"] == answer["atoms"] == 1.0, answer
    assert server.get_json("/read?cache")["grew"] <= 2 * MIB


@supported
def test_hup_makes_the_new_preloaders_heap_immortal(make_server):
    server = make_immortal_server(make_server).start()
    server.wait_log(PASS_LINE % ("preloader", 1))
    server.signal(signal.SIGHUP)
    server.wait_log(PASS_LINE % ("preloader", 2), timeout=30)
    server.wait_log(r"Generation 2 is ready", timeout=30)
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers of generation 2")
    assert server.get_json("/immortal")["records"] == 1.0
    assert server.log().count("The master made its") == 1  # once, at start


@supported
def test_workers_recycled_at_max_requests_exit_cleanly(make_server):
    server = make_immortal_server(make_server, config=IMMORTAL + "max_requests = 5\n").start()
    pids = set()

    def replaced():
        pids.add(server.get_json("/immortal")["pid"])
        return server.control("show stats")["replaced_max_requests"] >= 4
    wait_for(replaced, timeout=30, what="workers replaced at max_requests")
    assert len(pids) >= 4
    log = server.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log
    assert re.findall(r"Worker exiting \(pid: \d+\)", log)
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0


@supported
def test_status_shows_the_immortal_pass(make_server):
    server = make_immortal_server(make_server).start()
    objects = int(server.wait_log(PASS_LINE % ("preloader", 1)).group(2))

    def passes():
        result = subprocess.run([sys.executable, "-m", "smartspawn", "status", "--pid",
                                 str(server.proc.pid), "--json"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        return [row["immortal"] for row in report["processes"] if "immortal" in row]

    (figures,) = wait_for(passes, what="the pass in the status")
    assert figures["objects"] == objects and figures["walked"] >= objects
    table = subprocess.run([sys.executable, "-m", "smartspawn", "status", "--pid",
                            str(server.proc.pid)], capture_output=True, text=True, timeout=30)
    assert re.search(r"gc_freeze immortal: preloader \(pid \d+\) made %d objects immortal"
                     % objects, table.stdout), table.stdout


@pytest.mark.skipif(WHY_NOT is None, reason="this CPython can make its heap immortal")
def test_where_it_cannot_work_it_warns_once_and_freezes(make_server):
    server = make_server(app_file="freezing.py", config=IMMORTAL).start()
    warning = 'gc_freeze = "immortal" acts as True: %s' % WHY_NOT
    assert server.log().count(warning) == 1, server.log()
    assert server.get_json()["garbage_freed"]  # collected, then frozen: as True does
    server.signal(signal.SIGHUP)
    server.wait_log(r"Generation 2 is ready", timeout=30)
    assert server.get_ok()
    assert server.log().count(warning) == 1
    assert "objects immortal" not in server.log()
