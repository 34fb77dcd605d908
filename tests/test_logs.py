"""What an operator reads (docs/logs.md): a refork or a HUP is one INFO line of smartspawn's
when it starts and one when it ends, however many workers; gunicorn's own per-worker lines
stay as plain gunicorn writes them; no line uses the code's words for the processes."""
import os
import re
import signal

import pytest

from conftest import wait_for

# gunicorn's own INFO lines (plain gunicorn writes them too, some once per worker).
GUNICORN_OWN = re.compile(r"Handling signal: |Hang up: |Booting worker with pid: |"
                          r"Worker exiting \(pid: |Control socket listening at |Listening at: ")
# The code's names for the processes; the README's process tree says preloader, standby,
# template and worker.
INTERNAL_WORDS = re.compile(r"spawner|stand-in|candidate|ChildRecord|SmartArbiter|Reforker|"
                            r"\bFleet\b", re.IGNORECASE)
LOG_RECORD = re.compile(r"^\[[^\]]+\] \[\d+\] \[([A-Z]+)\] (.*)$", re.MULTILINE)


def info_lines(text):
    return [message for level, message in LOG_RECORD.findall(text) if level == "INFO"]


def own_info_lines(text):
    return [line for line in info_lines(text) if not GUNICORN_OWN.match(line)]


def since(server, start, pattern, timeout=30):
    """(The log from offset `start` to the end of the first match of `pattern` after it,
    that match)."""
    match = wait_for(lambda: re.search(pattern, server.log()[start:]), timeout,
                     what="%r in the log\n%s" % (pattern, server.log()))
    return match.string[:match.end()], match


@pytest.mark.parametrize("workers", [2, 4])
def test_a_refork_and_a_hup_are_two_info_lines_each_whatever_the_worker_count(
        make_server, workers):
    server = make_server(workers=workers, config="fork_worker = True\n").start()

    start = len(server.log())
    server.signal(signal.SIGURG)
    refork, done = since(server, start, r"refork to generation 2 \(URG\) done in [\d.]+s: "
                                        r"(\d+) workers replaced")
    assert int(done.group(1)) == workers
    ours = own_info_lines(refork)
    assert len(ours) == 2, ours
    assert re.match(r"Refork to generation 2 \(URG\): worker \(pid: \d+, \d+ requests\) "
                    r"becomes the template", ours[0]), ours

    start = len(server.log())
    server.signal(signal.SIGHUP)
    hup, done = since(server, start, r"Reload to generation 3 \(HUP\) done in [\d.]+s: "
                                     r"(\d+) workers replaced")
    assert int(done.group(1)) == workers
    ours = own_info_lines(hup)
    assert len(ours) == 2, ours
    assert re.match(r"Reload to generation 3 \(HUP\): preloader \(pid: \d+, gen=3\) started",
                    ours[0]), ours
    # gunicorn's own line, once per new worker, as plain gunicorn writes it on a HUP.
    booted = [line for line in info_lines(hup) if line.startswith("Booting worker with pid")]
    assert len(booted) == workers, booted
    # The details are at DEBUG.
    assert re.search(r"DEBUG\] Generation 3 is ready; replacing the %d workers" % workers, hup)
    assert re.search(r"DEBUG\] Replacing worker \(pid: \d+\): refork to generation 2", refork)


def test_plain_gunicorn_writes_the_same_booting_line_per_worker_on_a_hup(make_server):
    """The per-worker line smartspawn keeps at INFO is gunicorn's own."""
    server = make_server(workers=2, worker_class="sync").start()
    start = len(server.log())
    server.signal(signal.SIGHUP)

    def hup():
        lines = info_lines(server.log()[start:])
        booted = [line for line in lines if line.startswith("Booting worker with pid")]
        exited = [line for line in lines if line.startswith("Worker exiting")]
        return booted if len(booted) >= 2 and len(exited) >= 2 else None
    booted = wait_for(hup, 20, what="the HUP's new workers\n" + server.log())
    assert len(booted) == 2, booted


def test_no_log_line_names_a_process_by_the_code_s_words(make_server):
    """Through a refork, a HUP, and a killed template: the words of the process tree."""
    server = make_server(workers=2, config="fork_worker = True\n").start()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    template = server.single("smartspawn template")
    server.signal(signal.SIGHUP)
    server.wait_log(r"Reload to generation 3 \(HUP\) done", timeout=30)
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 4 \(URG\) done", timeout=30)
    new_template = server.single("smartspawn template")
    assert new_template != template
    os.kill(new_template, signal.SIGKILL)
    server.wait_log(r"template \(pid: %d, gen=4\) was sent SIGKILL" % new_template)
    server.wait_log(r"template \(pid: %d, gen=4\) exited; spawning from the preloader"
                    % new_template)
    assert server.stop() == 0
    lines = LOG_RECORD.findall(server.log())
    assert len(lines) > 50
    named = [message for _, message in lines if INTERNAL_WORDS.search(message)]
    assert named == []
