"""A standby's adoption by the master (spawner/base.py), in real forked processes."""
import os
import select
import time
import types

import pytest

from gunicorn_smartspawn.spawner.base import REPARENT_TIMEOUT, Spawner

# pytest's own threads make 3.12+ warn at each fork: the children here take no lock.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")


def test_a_standby_whose_master_died_before_adopting_it_exits_at_once():
    # The "master" is a process that is not the subreaper: when the middle process exits,
    # the standby is adopted by another (init), as when the master died meanwhile.
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    spawner = types.SimpleNamespace(master_pid=gone, log=None)
    result_r, result_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        code = 1
        me = os.getpid()
        try:
            if os.fork() == 0:  # the standby
                started = time.monotonic()
                adopted = Spawner.wait_for_adoption(spawner, middle=me)
                os.write(result_w, b"%d %.3f" % (adopted, time.monotonic() - started))
            code = 0
        finally:
            os._exit(code)
    os.waitpid(middle, 0)  # the middle exits at once: the standby is orphaned
    assert select.select([result_r], [], [], 2 * REPARENT_TIMEOUT)[0]
    adopted, seconds = os.read(result_r, 64).split()
    assert adopted == b"0" and float(seconds) < REPARENT_TIMEOUT / 2
