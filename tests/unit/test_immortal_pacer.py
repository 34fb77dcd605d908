"""immortal.Pacer: how a long immortal pass keeps a worker's heartbeat (fake clock)."""
from gunicorn_smartspawn.forksafety import immortal


def test_the_beat_comes_once_per_interval_however_often_it_is_ticked(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(immortal.time, "monotonic", lambda: now[0])
    beats = []
    pacer = immortal.Pacer(lambda: beats.append(now[0]))
    for _ in range(20):  # ticks 0.125 s apart (exact in binary) for 2.5 s
        now[0] += 0.125
        pacer.tick()
    interval = immortal.BEAT_INTERVAL
    assert len(beats) == int(2.5 / interval)
    assert all(b - a >= interval - 1e-9 for a, b in zip(beats, beats[1:], strict=False))


def test_no_beat_before_the_first_interval_is_over(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(immortal.time, "monotonic", lambda: now[0])
    beats = []
    pacer = immortal.Pacer(lambda: beats.append(now[0]))
    now[0] += immortal.BEAT_INTERVAL / 2
    pacer.tick()
    assert beats == []


def test_a_slice_of_objects_is_followed_by_a_tick(monkeypatch):
    """make_immortal works through a list a slice at a time, ticking after each: one list
    may hold tens of millions of objects."""
    slices = []
    monkeypatch.setattr(immortal, "make_some_immortal",
                        lambda objects, words, again: slices.append(len(objects)) or 0)
    ticks = []
    pacer = type("P", (), {"tick": lambda self: ticks.append(len(slices))})()
    immortal.make_immortal([None] * (immortal.SLICE * 2 + 7), None, [], pacer)
    assert slices == [immortal.SLICE, immortal.SLICE, 7] and ticks == [1, 2, 3]
