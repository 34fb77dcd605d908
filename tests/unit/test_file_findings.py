"""fork_safety's verdict on a regular file a spawner holds: blamed when open for reading
(one offset for every worker), noted when only written to or not read with read()."""
import os

import pytest

from gunicorn_smartspawn import forksafety


def verdict(fd):
    return forksafety.file_finding(fd, forksafety.fd_target(fd), "on_preload")


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
