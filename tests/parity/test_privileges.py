"""Parity of privilege dropping (root only): `--user nobody --group nogroup` under plain
gunicorn and under smartspawn.

1. test_user_and_group: both serve; the workers' uid and gid are nobody/nogroup.
2. test_initgroups: `--initgroups`: both serve as nobody with nobody's supplementary
   groups (the gid must be set while the process is still root: after setuid, setgid
   fails EPERM).
3. test_root_only_worker_tmp_dir: a `worker_tmp_dir` only root can enter: both serve, with
   no respawn loop and no traceback (gunicorn's master, still root, creates each
   heartbeat file).
4. test_reuse_port_on_a_privileged_port: `--reuse-port` on a port below 1024: both serve
   (gunicorn binds each worker's socket before the privilege drop).

The apps run as `nobody`, so each server lives in a world-readable directory (pytest's
tmp_path is private to root) and runs tests/apps/parity_priv_identity.py, which writes no
file.
"""
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from parity.conftest import requires_root
from parity.helpers import boot


pytestmark = requires_root

APP = "parity_priv_identity.py"
DROP = ["--user", "nobody", "--group", "nogroup"]
WORKERS = 2
# gunicorn's reap_workers() on a worker's non-zero exit or death by a signal.
WORKER_DEATH = r"Worker \(pid:\d+\) (?:exited with code|was sent)"


def nobody_ids():
    if os.geteuid() != 0:
        return None, None
    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


NOBODY, NOGROUP = nobody_ids()


@pytest.fixture
def world_dir():
    """A directory `nobody` can read (mode 0755), removed after the servers' teardown."""
    path = Path(tempfile.mkdtemp(prefix="parity-priv-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def worker_ids(server):
    """{(uid, euid, gid, egid, groups)} of the server's live workers, read from /proc."""
    ids = set()
    for pid in server.worker_pids():
        try:
            status = Path("/proc/%d/status" % pid).read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid, euid = (int(x) for x in fields["Uid"].split()[:2])
        gid, egid = (int(x) for x in fields["Gid"].split()[:2])
        groups = tuple(sorted(int(x) for x in fields["Groups"].split()))
        ids.add((uid, euid, gid, egid, groups))
    return ids


def identity_outcome(server, timeout=15.0):
    """What an operator sees: does it serve, as whom, and TERM's exit code."""
    serves = boot(server, timeout)
    ids = worker_ids(server) if serves else set()
    answered = server.get_json("/") if serves else None
    return {"serves": serves,
            "uids": {(uid, euid) for uid, euid, _, _, _ in ids},
            "gids": {(gid, egid) for _, _, gid, egid, _ in ids},
            "groups": {groups for *_, groups in ids},
            "answers_as": answered and (answered["uid"], answered["groups"]),
            "exit": server.stop(signal.SIGTERM)}


def test_user_and_group(world_dir, run_both):
    """`--user nobody --group nogroup`: both serve, every worker runs as nobody:nogroup,
    TERM exits 0. (Supplementary groups are not compared: gunicorn keeps root's.)"""
    def scenario(server):
        outcome = identity_outcome(server)
        outcome.pop("groups")
        outcome["answers_as"] = outcome["answers_as"] and outcome["answers_as"][0]
        return outcome

    plain, smart = run_both(scenario, app_file=APP, parent=world_dir, workers=WORKERS,
                            args=DROP)
    assert plain == {"serves": True, "uids": {(NOBODY, NOBODY)},
                     "gids": {(NOGROUP, NOGROUP)}, "answers_as": NOBODY, "exit": 0}
    assert smart == plain


def test_initgroups(world_dir, run_both):
    """`--user nobody --group nogroup --initgroups`: both serve as nobody with
    nobody's supplementary groups only, and TERM exits 0.

    gunicorn's `util.set_owner_process` calls `os.initgroups(user, gid)` *instead of*
    `os.setgid`, so its workers keep gid 0 (checked below as a gunicorn fact). smartspawn
    means to drop in the right order (setgid, initgroups, setuid): its workers' gid must be
    the requested group. Everything else is compared."""
    def scenario(server):
        return identity_outcome(server)

    plain, smart = run_both(scenario, app_file=APP, parent=world_dir, workers=WORKERS,
                            args=[*DROP, "--initgroups"])
    plain_gids, smart_gids = plain.pop("gids"), smart.pop("gids")
    assert plain == {"serves": True, "uids": {(NOBODY, NOBODY)}, "groups": {(NOGROUP,)},
                     "answers_as": (NOBODY, [NOGROUP]), "exit": 0}
    assert plain_gids == {(0, 0)}
    assert smart == plain
    assert smart_gids == {(NOGROUP, NOGROUP)}


def test_root_only_worker_tmp_dir(world_dir, run_both):
    """`--worker-tmp-dir` a directory only root may enter (mode 0700), with
    `--user nobody --group nogroup`: gunicorn's master creates each heartbeat
    file and chowns it, so both serve; no worker fails and is respawned in a loop (at most
    WORKERS + 2 "Booting worker" lines over ~3 s of requests, no "Worker (pid:N) exited
    with code" line: smartspawn's failing workers die before "Booting worker"), and no
    traceback."""
    heartbeats = world_dir / "heartbeats"
    heartbeats.mkdir(mode=0o700)
    os.chmod(heartbeats, 0o700)

    def scenario(server):
        serves = boot(server)
        ok = failed = 0
        deadline = time.monotonic() + 3.0
        while serves and time.monotonic() < deadline:
            try:
                ok += server.request("/", timeout=5.0)[0] == 200
            except OSError:
                failed += 1
        log = server.log()
        return {"serves": serves, "served_50": ok >= 50, "failed": failed,
                "boots_bounded": log.count("Booting worker") <= WORKERS + 2,
                "worker_deaths": len(re.findall(WORKER_DEATH, log)),
                "traceback": "Traceback" in log, "exit": server.stop(signal.SIGTERM)}

    plain, smart = run_both(scenario, app_file=APP, parent=world_dir, workers=WORKERS,
                            args=[*DROP, "--worker-tmp-dir", str(heartbeats)])
    assert plain == {"serves": True, "served_50": True, "failed": 0, "boots_bounded": True,
                     "worker_deaths": 0, "traceback": False, "exit": 0}
    assert smart == plain


def free_privileged_port():
    """A port in 900-1023 that 127.0.0.1 can bind now (root may bind below 1024)."""
    for port in range(900, 1024):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 900-1023")


def test_reuse_port_on_a_privileged_port(world_dir, run_both):
    """`--reuse-port --user nobody --group nogroup` on 127.0.0.1:<port below 1024>:
    gunicorn binds each worker's own socket in the child *before* it drops privileges, so
    both serve as nobody and TERM exits 0; smartspawn's workers must too.

    With reuse_port gunicorn's master binds nothing and logs no port, so the scenario
    puts the chosen port in place of the harness's `--bind 127.0.0.1:0` (`--bind` appends:
    a second one would add a listener, not replace it)."""
    def scenario(server):
        port = free_privileged_port()
        server.cmd[server.cmd.index("--bind") + 1] = "127.0.0.1:%d" % port
        server.port = port
        outcome = identity_outcome(server)
        outcome.pop("groups")
        outcome["answers_as"] = outcome["answers_as"] and outcome["answers_as"][0]
        return outcome

    plain, smart = run_both(scenario, app_file=APP, parent=world_dir, workers=WORKERS,
                            args=["--reuse-port", *DROP])
    assert plain == {"serves": True, "uids": {(NOBODY, NOBODY)},
                     "gids": {(NOGROUP, NOGROUP)}, "answers_as": NOBODY, "exit": 0}
    assert smart == plain
