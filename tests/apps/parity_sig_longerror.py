"""Test app (tests/parity/test_import_errors.py): its import raises an exception with a
100 000-character message holding non-ASCII text ("é", "日本").

LONG_ERROR (environment) shapes the message:
- "mixed" (default): 1000 times "é日本" + 97 dots: 105 KB of UTF-8, 115 KB as ASCII-only
  JSON, less than a Unix socket's send buffer (208 KiB here) but far more than 4 KiB;
- "non-ascii": 25 000 times "é日本 ": 225 KB of UTF-8, 475 KB as ASCII-only JSON.

Each import attempt appends the importing pid to $TEST_DIR/broken_imports.txt.
"""
import os

with open(os.path.join(os.environ["TEST_DIR"], "broken_imports.txt"), "a") as f:
    f.write("%d\n" % os.getpid())

if os.environ.get("LONG_ERROR", "mixed") == "mixed":
    BODY = ("é日本" + "." * 97) * 1000
else:
    BODY = "é日本 " * 25000
raise RuntimeError("LONG IMPORT ERROR " + BODY)
