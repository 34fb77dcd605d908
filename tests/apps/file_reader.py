"""Test app: a data file opened at import and read at many offsets per request.

$TEST_DIR/records.bin holds RECORDS records of SIZE bytes, record i made of its number;
$TEST_DIR/records.zip holds the same records, one member each. READER (env) picks what
the import keeps open:

- "index": the file, read with seek() + read() (a custom index, a MaxMind reader in file
  mode);
- "zip": a zipfile.ZipFile, read member by member;
- "pread": the file, read with os.pread() (the fix that needs no hook).

GET /?N  -> N lookups of random records -> {"pid", "wrong": lookups that returned another
            record's bytes or failed}
reopen() -> open the kept file again (for a post_fork hook: the fix)
"""
import json
import os
import random
import zipfile

RECORDS = 4096
SIZE = 256
READER = os.environ.get("READER", "index")
DATA = os.path.join(os.environ.get("TEST_DIR", ""), "records.bin")
ARCHIVE = os.path.join(os.environ.get("TEST_DIR", ""), "records.zip")


def record(i):
    return (b"%08d" % i) * (SIZE // 8)


def write_data(directory):
    """For the test, before the server starts."""
    with open(os.path.join(directory, "records.bin"), "wb") as f:
        f.write(b"".join(record(i) for i in range(RECORDS)))
    with zipfile.ZipFile(os.path.join(directory, "records.zip"), "w") as archive:
        for i in range(RECORDS):
            archive.writestr("r%d" % i, record(i))


def reopen():
    global kept
    kept.close()
    kept = zipfile.ZipFile(ARCHIVE) if READER == "zip" else open(DATA, "rb")


kept = None
if os.environ.get("TEST_DIR"):  # not when the test imports this module for write_data
    kept = zipfile.ZipFile(ARCHIVE) if READER == "zip" else open(DATA, "rb")


def lookup(i):
    if READER == "zip":
        return kept.read("r%d" % i)
    if READER == "pread":
        return os.pread(kept.fileno(), SIZE, i * SIZE)
    kept.seek(i * SIZE)
    return kept.read(SIZE)


def wrong_lookups(n):
    wrong = 0
    for _ in range(n):
        i = random.randrange(RECORDS)
        try:
            wrong += lookup(i) != record(i)
        except Exception:  # noqa: BLE001 (a zip member read at the wrong offset: BadZipFile)
            wrong += 1
    return wrong


def app(environ, start_response):
    body = {"pid": os.getpid(), "wrong": wrong_lookups(int(environ["QUERY_STRING"] or 1))}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
