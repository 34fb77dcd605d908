"""metrics_bind: its validation, and what /metrics and /healthz make of a snapshot
(master/metrics.py), in-process. tests/test_prometheus.py serves them for real."""
import sys
import types

import pytest
from gunicorn.config import Config
from gunicorn.errors import ConfigError

from fakes import Table
from gunicorn_smartspawn.master import metrics, snapshot
from gunicorn_smartspawn.shared import config
from gunicorn_smartspawn.shared.counters import Counters


def test_without_prometheus_client_the_error_names_the_setting_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    namespace = types.SimpleNamespace(metrics_bind="127.0.0.1:9187")
    monkeypatch.setitem(sys.modules, "__config__", namespace)
    cfg = Config()
    del cfg.settings["metrics_bind"]  # as at first start: gunicorn's table has no such name
    with pytest.raises(ConfigError) as error:
        config.install_settings(cfg)
    assert str(error.value) == (
        "Invalid value for smartspawn setting metrics_bind='127.0.0.1:9187': needs "
        "prometheus_client, which is not installed: pip install gunicorn-smartspawn[metrics]")


@pytest.mark.parametrize("text, address", [("127.0.0.1:9187", ("127.0.0.1", 9187)),
                                           ("[::1]:1", ("::1", 1)),
                                           ("myhost:65535", ("myhost", 65535))])
def test_host_and_port(text, address):
    assert config.parse_host_port(text) == address


def content(processes, **fields):
    """A state file's content, as snapshot.state_file makes it."""
    return {"generation": 2, "workers_target": 2, "reforks": 1,
            "lifecycle": {"replaced_max_requests": 3, "replaced_max_worker_memory": 1},
            "departed_workers": {"requests": 0, "oob_collections": 5,
                                 "oob_microseconds": 2_000_000},
            "spawn_latency": {"buckets": [0.01, 0.1], "counts": [4, 1, 2], "sum": 3.5},
            "oob_grants": 6, "processes": processes, **fields}


def worker(state, **fields):
    return {"pid": 1, "role": "worker", "state": state, **fields}


@pytest.mark.parametrize("processes, serving, why", [
    ([{"role": "preloader (booting)"}], False, "starting: the preloader is loading the app"),
    ([{"role": "preloader"}, worker("booting")], False, "no worker serves (1 booting)"),
    ([{"role": "preloader"}], False, "no worker serves (0 booting)"),
    ([worker("booting"), worker("serving")], True, "ok: 1 workers serve (generation 2)"),
    # A HUP or a refork: the outgoing workers serve until their replacements do.
    ([worker("outgoing"), worker("outgoing"), worker("booting")], True,
     "ok: 2 workers serve (generation 2)"),
    ([worker("candidate"), worker("stopping")], False, "no worker serves (0 booting)"),
])
def test_health(processes, serving, why):
    assert metrics.health(content(processes), stopping=False) == (serving, why)


def test_health_before_the_first_snapshot_and_while_stopping():
    assert metrics.health(None, stopping=False) == (False, "starting: no worker serves yet")
    assert metrics.health(content([worker("serving")]), stopping=True) == (False, "stopping")


def samples(families):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def test_memory_by_role_and_in_total():
    rows = [{"role": role, "pss": pss, "uss": pss // 2} for role, pss in (
        ("master", 10), ("preloader", 20), ("standby", 4), ("worker", 30),
        ("worker (outgoing)", 30), ("template (booting)", 8))]
    found = samples(metrics.memory_families(rows))
    assert found[("smartspawn_memory_pss_bytes", (("role", "worker"),))] == 60
    assert found[("smartspawn_memory_uss_bytes", (("role", "template"),))] == 4
    assert found[("smartspawn_processes", (("role", "worker"),))] == 2
    assert found[("smartspawn_server_memory_pss_bytes", ())] == 102
    assert found[("smartspawn_server_memory_uss_bytes", ())] == 51


def test_the_server_families():
    processes = [{"role": "master"},
                 worker("serving", oob_collections=2, oob_microseconds=500_000, oob=None,
                        disabled=True),
                 worker("serving", oob_collections=0, oob_microseconds=0, oob="working",
                        disabled=False),
                 worker("booting", oob_collections=0, oob_microseconds=0, oob="waiting",
                        disabled=False)]
    found = samples(metrics.server_families(content(processes)))
    assert found[("smartspawn_workers", (("state", "serving"),))] == 2
    assert found[("smartspawn_workers", (("state", "booting"),))] == 1
    assert found[("smartspawn_workers", (("state", "outgoing"),))] == 0
    assert found[("smartspawn_reforks_total", ())] == 1
    assert found[("smartspawn_worker_replacements_total", (("reason", "max_requests"),))] == 3
    # The workers that exited still count: a counter never goes down.
    assert found[("smartspawn_oob_gc_collections_total", ())] == 7
    assert found[("smartspawn_oob_gc_seconds_total", ())] == 2.5
    assert found[("smartspawn_oob_workers", (("state", "waiting"),))] == 1
    assert found[("smartspawn_oob_workers", (("state", "working"),))] == 1
    assert found[("smartspawn_oob_grants_total", ())] == 6
    assert found[("smartspawn_disabled_workers", ())] == 1
    assert found[("smartspawn_spawn_latency_seconds_bucket", (("le", "0.01"),))] == 4
    assert found[("smartspawn_spawn_latency_seconds_bucket", (("le", "0.1"),))] == 5
    assert found[("smartspawn_spawn_latency_seconds_bucket", (("le", "+Inf"),))] == 7
    assert found[("smartspawn_spawn_latency_seconds_sum", ())] == 3.5


def test_latencies_fall_in_the_first_bucket_that_holds_them():
    latencies = snapshot.Latencies()
    for seconds in (0.0005, 0.001, 0.0011, 60):
        latencies.observe(seconds)
    counts = latencies.fields()["counts"]
    assert counts[:2] == [2, 1] and counts[-1] == 1 and sum(counts) == 4


def test_a_released_slot_adds_its_totals_to_departed():
    counters = Counters(slots=2)
    slot = counters.allocate()
    counters.set(slot, "oob_collections", 3)
    counters.set(slot, "retire", 1)
    counters.release(slot)
    counters.release(counters.allocate())  # given again zeroed: adds nothing
    assert counters.departed == {"requests": 0, "oob_collections": 3, "oob_microseconds": 0}


def test_a_worker_is_booting_until_its_heartbeat_moves(monkeypatch):
    table = Table(monkeypatch)
    booting, serving = table.spawn(booted=False), table.spawn()
    assert snapshot.worker_state(booting) == "booting"
    assert snapshot.worker_state(serving) == "serving"
    table.fleet.make_outgoing(serving, "max_requests")
    assert snapshot.worker_state(serving) == "outgoing"
