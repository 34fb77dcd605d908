"""The gunicorn releases smartspawn runs on: 24.1 and later, before 28.

pyproject.toml requires the same range, and tests/test_gunicorn_contract.py checks both and
what each release has of what smartspawn patches; CI runs it on the newest release of each
major (.ci/run). What came later in the range is detected, not assumed: the control socket
(25.1, patches.CONTROL_SOCKET), the dirty arbiter (25.0) and ``show stats`` counters (25.1).

gunicorn 23's master loop is another one (a list for its signal queue woken through a
pipe, no wait_for_signals()), which SmartArbiter does not extend: its server would start
and never spawn a worker. Such a gunicorn is refused at startup (`refuse_unsupported`).
"""
import gunicorn

LOWEST = (24, 1)
BEYOND = (28,)
SUPPORTED = ">=%d.%d,<%d" % (*LOWEST, *BEYOND)


def unsupported(version_info=None):
    """Why smartspawn cannot run on this gunicorn (or `version_info`), or None when it can."""
    version_info = version_info or gunicorn.version_info
    if LOWEST <= version_info < BEYOND:
        return None
    return ("smartspawn runs on gunicorn %s; this is gunicorn %s: install one in that "
            "range (pip install 'gunicorn%s')"
            % (SUPPORTED, ".".join(map(str, version_info)), SUPPORTED))


def refuse_unsupported():
    """Raise RuntimeError on an unsupported gunicorn: gunicorn prints its message as
    ``Error: ...`` and exits 1, before anything starts."""
    reason = unsupported()
    if reason is not None:
        raise RuntimeError(reason)
