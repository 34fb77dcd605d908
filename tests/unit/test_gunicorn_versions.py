"""The gunicorn releases smartspawn runs on (host/versions.py): another is refused at
startup, with the version installed and the range, before anything is patched."""
import gunicorn
import pytest
from gunicorn.arbiter import Arbiter

import smartspawn
from gunicorn_smartspawn.host import versions


@pytest.mark.parametrize("version_info, supported", [
    ((23, 0, 0), False), ((24, 0, 0), False), ((24, 1, 0), True), ((25, 0, 3), True),
    ((27, 0, 1), True), ((28, 0, 0), False),
])
def test_the_range(version_info, supported):
    assert (versions.unsupported(version_info) is None) == supported


@pytest.mark.parametrize("worker_class", [smartspawn.Worker, smartspawn.ThreadWorker])
def test_an_unsupported_gunicorn_is_refused_when_gunicorn_loads_the_worker_class(
        monkeypatch, worker_class):
    # gunicorn's BaseApplication.run() prints a RuntimeError from it as "Error: ..." and
    # exits 1; its Config.worker_class calls setup() before the arbiter does anything.
    monkeypatch.setattr(gunicorn, "version_info", (23, 0, 0))
    run = Arbiter.run
    with pytest.raises(RuntimeError) as refused:
        worker_class.setup()
    assert str(refused.value) == (
        "smartspawn runs on gunicorn >=24.1,<28; this is gunicorn 23.0.0: install one in "
        "that range (pip install 'gunicorn>=24.1,<28')")
    assert Arbiter.run is run
