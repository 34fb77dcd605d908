"""fork_safety's verdict on a regular file a spawner holds: blamed when open for reading
(one offset for every worker) or locked with flock() (one lock for every worker), noted
when only written to, mapped, a log handler's, or not read with read()."""
import fcntl
import logging
import mmap
import os
import sqlite3

import pytest

from gunicorn_smartspawn import forksafety
from gunicorn_smartspawn.forksafety import libraries


def verdict(fd):
    return forksafety.file_finding(fd, forksafety.fd_target(fd), "on_preload",
                                   forksafety.logging_fds())


@pytest.mark.parametrize("mode", ["rb", "r+b", "r"])
def test_a_file_open_for_reading_is_unsafe_with_its_fixes(tmp_path, mode):
    path = tmp_path / "records.bin"
    path.write_bytes(b"x" * 100)
    with open(path, mode) as f:
        finding = verdict(f.fileno())
        assert finding.key == "fd %d is %s" % (f.fileno(), path)
    assert finding.level == "unsafe"
    for advice in ("open for reading: every worker would share its offset",
                   "close it in the on_preload hook and open it in each worker",
                   "post_fork", "os.pread()"):
        assert advice in finding.text


@pytest.mark.parametrize("name", ["module.py", "__pycache__/module.cpython-311.pyc"])
def test_a_module_another_thread_is_importing_is_noted(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"x" * 100)
    with open(path, "rb") as f:
        finding = verdict(f.fileno())
    assert finding.level == "debug" and "importing" in finding.text


@pytest.mark.parametrize("mode", ["ab", "wb"])
def test_a_file_only_written_to_is_noted(tmp_path, mode):
    with open(tmp_path / "app.log", mode) as f:
        assert verdict(f.fileno()).level == "debug"


def test_what_is_not_read_with_read_is_noted(tmp_path):
    path = tmp_path / "records.bin"
    path.write_bytes(b"x")
    handles = [os.open(path, os.O_PATH), os.open("/dev/null", os.O_RDONLY),
               os.memfd_create("arena"), os.open(tmp_path, os.O_RDONLY)]
    try:
        assert [verdict(fd).level for fd in handles] == ["debug"] * len(handles)
    finally:
        for fd in handles:
            os.close(fd)


def test_a_file_locked_with_flock_is_unsafe_a_posix_lock_is_not(tmp_path):
    with open(tmp_path / "leader.lock", "w") as flocked, \
            open(tmp_path / "record.lock", "w") as posix_locked:
        fcntl.flock(flocked, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(posix_locked, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a child holds none
        finding = verdict(flocked.fileno())
        assert finding.level == "unsafe" and "every worker would hold it" in finding.text
        assert "post_fork" in finding.text
        assert verdict(posix_locked.fileno()).level == "debug"


def test_a_file_kept_open_only_by_a_memory_map_is_noted(tmp_path):
    path = tmp_path / "vectors.bin"
    path.write_bytes(b"x" * mmap.PAGESIZE)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # dups the fd
    try:
        fds = [fd for fd in forksafety.open_fds() if forksafety.fd_target(fd) == str(path)]
        assert len(fds) == 1 and verdict(fds[0]).level == "debug"
    finally:
        mapped.close()


def test_a_logging_handlers_file_is_noted_in_any_mode(tmp_path):
    handler = logging.FileHandler(tmp_path / "app.log", mode="a+")
    logger = logging.getLogger("smartspawn-unit-file-findings")
    logger.addHandler(handler)
    try:
        assert verdict(handler.stream.fileno()).level == "debug"
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_an_sqlite_databases_file_is_reported_as_its_connection_only(tmp_path):
    connection = sqlite3.connect(tmp_path / "app.db")
    connection.execute("create table t (x)")
    try:
        findings, _ = forksafety.inspect_process(set(), "on_preload",
                                                 [(connection, libraries.sqlite_connection)])
        about_db = [f for f in findings if "app.db" in f.text]
        assert len(about_db) == 1 and "sqlite3" in about_db[0].text
    finally:
        connection.close()


def test_a_mapped_file_whose_name_is_not_utf8_is_listed_as_os_fsdecode_names_it(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.bin")  # Latin-1, not UTF-8
    with open(path, "wb") as f:
        f.write(b"x" * mmap.PAGESIZE)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert os.fsdecode(path) in forksafety.mapped_files(fresh=True)
