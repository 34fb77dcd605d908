"""Test app for systemd notifications (tests/test_systemd.py).

Its import takes IMPORT_SECONDS (default 1), then appends the time it ended to
$TEST_DIR/imported; it fails while $TEST_DIR/broken exists (a reload that fails).
"""
import os
import time

TEST_DIR = os.environ["TEST_DIR"]

time.sleep(float(os.environ.get("IMPORT_SECONDS", "1")))
if os.path.exists(os.path.join(TEST_DIR, "broken")):
    raise RuntimeError("broken on purpose")
with open(os.path.join(TEST_DIR, "imported"), "a") as f:
    f.write("%f\n" % time.time())


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
