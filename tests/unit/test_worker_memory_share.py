"""max_worker_memory = "10%": a share of the master's memory cgroup limit, resolved when
the master validates its settings (at start and on HUP), here with a faked cgroup."""
import copy
import os
import pickle

import pytest

from gunicorn_smartspawn.shared import cgroup, config
from gunicorn_smartspawn.shared.cgroup import CgroupMemory

MIB = 1024 ** 2


@pytest.fixture
def memory(monkeypatch):
    """Set `memory.now` to what memory_of() returns for this process (the master)."""
    state = type("Fake", (), {"now": None})()

    def memory_of(pid):
        assert pid == os.getpid()
        if isinstance(state.now, Exception):
            raise state.now
        return state.now
    monkeypatch.setattr(cgroup, "memory_of", memory_of)
    return state


@pytest.mark.parametrize("value, expected", [("10%", 200 * MIB), (" 2.5 % ", 50 * MIB),
                                              ("100%", 2000 * MIB)])
def test_a_share_of_the_cgroup_limit(memory, value, expected):
    memory.now = CgroupMemory(1, "/web", 300 * MIB, 2000 * MIB)
    size = config.validate_worker_memory(value)
    assert size == expected and isinstance(size, int)
    assert size.describe() == ("max_worker_memory = %g%% of the memory cgroup's limit "
                               "(/web, 2000.0 MiB): %.1f MiB"
                               % (float(value.strip(" %")), expected / MIB))
    # gunicorn copies its settings; nothing is lost on the way.
    for again in (copy.copy(size), pickle.loads(pickle.dumps(size))):
        assert again == size and again.memory == size.memory


@pytest.mark.parametrize("now, says", [
    (CgroupMemory(1, "/web", 300 * MIB, None), "its memory cgroup /web has no limit"),
    (CgroupMemory(2, "/", 300 * MIB, None), "its memory cgroup / has no limit"),
    (None, "it is in no memory cgroup"),
    (PermissionError(13, "Permission denied"), "cannot be read"),
    (CgroupMemory(2, "/tiny", 0, 4 * MIB), "10% of the memory cgroup's limit (4194304 bytes) "
                                           "is below 1MB"),
])
def test_a_share_without_a_limit_is_refused_at_validation(memory, now, says):
    memory.now = now
    with pytest.raises(ValueError, match="^a share of|below 1MB") as error:
        config.validate_worker_memory("10%")
    assert says in str(error.value)


@pytest.mark.parametrize("value", ["0%", "0.0%", "101%", "-5%", "ten%", "%", "10%%"])
def test_a_share_that_is_no_percentage_is_refused_before_the_cgroup_is_read(memory, value):
    memory.now = AssertionError("the cgroup is not read")
    with pytest.raises(ValueError, match="percentage above 0 and at most 100"):
        config.validate_worker_memory(value)


def test_sizes_are_still_sizes(memory):
    memory.now = AssertionError("the cgroup is not read")
    assert config.validate_worker_memory("512MB") == 512 * MIB
    assert config.validate_worker_memory(None) is None
