"""bench's own decisions: which steps run, and the paced load's rate."""
import argparse
import sys
import types
from pathlib import Path

import pytest

# bench/ is beside tests/, not installed. Appended: an installed gunicorn_smartspawn
# still comes first.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from bench import plots  # noqa: E402
from bench.__main__ import STEPS, step_list, steps  # noqa: E402
from bench.recycle_latency import KINDS, pace_of, pace_text  # noqa: E402


def test_steps_are_checked_by_name():
    assert step_list("spawn,recycle") == ["spawn", "recycle"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown step"):
        step_list("spawn,nope")
    with pytest.raises(argparse.ArgumentTypeError, match="none given"):
        step_list(",")
    assert "lifecycle" in STEPS
    assert step_list("oobcoord") == ["oobcoord"]


def test_every_step_has_a_command_in_the_order_of_steps(tmp_path):
    """A name in STEPS that steps() does not know would never run (nor be said skipped)."""
    assert [name for name, _, _ in steps(False, tmp_path)] == list(STEPS)
    oobcoord = dict((name, argv) for name, argv, _ in steps(True, tmp_path))["oobcoord"]
    assert oobcoord[1:4] == ["-m", "bench.oob_coordination", "--quick"]


def test_the_paced_load_is_a_share_of_the_lower_saturated_rate():
    """Paced above the machine's capacity, p99 measures a queue: the pace is a share of
    what the slower steady server did saturated, in the same run."""
    runs = {("saturated", kind, "steady"): [{"rps": rps}]
            for kind, rps in zip(KINDS, (1549.0, 1800.0), strict=True)}
    pace = pace_of(runs, types.SimpleNamespace(rate=None, pace=0.5))
    assert pace == {"rate": 774.5, "fraction": 0.5, "saturated_rps": 1549.0}
    assert pace_text(pace).startswith("774 req/s in all: 50 % of 1549")
    fixed = pace_of(runs, types.SimpleNamespace(rate=2000.0, pace=0.5))
    assert fixed["rate"] == 2000.0 and pace_text(fixed).endswith("(--rate)")


def test_a_figure_without_matplotlib_draws_nothing(monkeypatch):
    drawn = []
    figure = plots.figure(lambda path: drawn.append(path))
    monkeypatch.setattr(plots, "AVAILABLE", False)
    assert figure("x.png") is False and drawn == []
    monkeypatch.setattr(plots, "AVAILABLE", True)
    assert figure("x.png") is True and drawn == ["x.png"]
