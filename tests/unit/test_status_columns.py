"""`smartspawn status`'s table cells (cli/status.py)."""
from gunicorn_smartspawn.cli.status import duration


def test_durations_and_a_heartbeat_in_the_future():
    assert [duration(s) for s in (2.54, 42, 185, 8040)] == ["2.5s", "42s", "3m05s", "2h14m"]
    # extend_deadline puts a sync worker's heartbeat in the future: its age is below zero.
    assert [duration(s) for s in (-4.04, -185)] == ["-4.0s", "-3m05s"]
