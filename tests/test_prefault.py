"""A standby copies, before its orders, the pages its spawner's previous worker wrote
(spawner/prefault.py): real forked processes and their page maps."""
import ctypes
import mmap
import os
import select
import tracemalloc

import pytest

from gunicorn_smartspawn.shared import _linux
from gunicorn_smartspawn.spawner import prefault

# pytest's own threads make 3.12+ warn at each fork: the children here take no lock
# (a pipe, a mapping and /proc), so none can be held by a thread that is not copied.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")

PAGE = prefault.PAGE
PAGES = 32
WRITTEN = [3, 4, 5, 10]
MAP_NORESERVE = 0x4000  # Linux; the mmap module names it from Python 3.13


def private_buffer():
    buf = mmap.mmap(-1, PAGES * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"x" * PAGES * PAGE)  # every page present before the fork: shared after it
    return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))


def exclusive_pages(start, pages, pid="self"):
    with open("/proc/%s/pagemap" % pid, "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        high = pagemap.read(pages * 8)[7::8]
    return [i for i, byte in enumerate(high) if byte & 0x81 == 0x81]


def in_child(run):
    """Fork; the child runs run(report) then waits until we close its pipe. -> (pid,
    what it reported, the pipe to close)."""
    reports_r, reports_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(reports_r)
            os.close(hold_w)
            os.write(reports_w, repr(run()).encode())
            os.close(reports_w)
            os.read(hold_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(reports_w)
    os.close(hold_r)
    assert select.select([reports_r], [], [], 10)[0], "the child did not report"
    report = eval(os.read(reports_r, 65536).decode())  # noqa: S307 (our own child's repr)
    os.close(reports_r)
    return pid, report, hold_w


def release(pid, hold_w):
    os.close(hold_w)
    os.waitpid(pid, 0)


def test_the_pages_a_worker_wrote_are_found_and_copied_into_the_standby():
    buf, start = private_buffer()

    def worker():
        for page in WRITTEN:
            buf[page * PAGE] = ord("y")
        assert buf[:].count(b"y") == len(WRITTEN)  # reading the rest copies nothing
        return exclusive_pages(start, PAGES)

    worker_pid, worker_pages, hold_worker = in_child(worker)
    try:
        assert worker_pages == WRITTEN
        assert prefault.written_pages(worker_pid, [(start, start + PAGES * PAGE)]) == [
            (start + 3 * PAGE, 3 * PAGE), (start + 10 * PAGE, PAGE)]

        def standby():
            before = exclusive_pages(start, PAGES)
            copied = prefault.take_faults_of(worker_pid)
            return before, copied, exclusive_pages(start, PAGES), buf[:].count(b"x")

        standby_pid, (before, copied, after, unchanged), hold_standby = in_child(standby)
        release(standby_pid, hold_standby)
    finally:
        release(worker_pid, hold_worker)
    assert before == []
    assert isinstance(copied, int) and copied >= len(WRITTEN)
    assert after == WRITTEN
    assert unchanged == PAGES * PAGE  # its own bytes, not the worker's


def test_a_worker_gone_leaves_the_faults_to_the_next_worker():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert "cannot be read" in prefault.take_faults_of(pid)


def test_a_worker_that_wrote_too_much_is_not_copied(monkeypatch):
    monkeypatch.setattr(prefault, "MAX_PAGES", 2)
    buf, start = private_buffer()
    worker_pid, _, hold = in_child(lambda: [buf.__setitem__(p * PAGE, 1) for p in WRITTEN])
    try:
        assert "more than 2" in prefault.take_faults_of(worker_pid)
    finally:
        release(worker_pid, hold)


def test_populate_write_refuses_a_range_not_mapped():
    buf, start = private_buffer()
    buf.close()
    with pytest.raises(OSError):
        _linux.populate_write(start, PAGE)


def test_a_large_mapping_barely_used_is_not_read_whole_into_memory():
    # 64 GiB of address space reserved, one page of it used (MAP_NORESERVE, as a big
    # calloc or an allocator's reservation): its page map is 128 MiB.
    try:
        reserved = mmap.mmap(-1, 64 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                             | MAP_NORESERVE)
    except OSError as exc:  # vm.overcommit_memory = 2
        pytest.skip("64 GiB cannot be reserved here: %s" % exc)
    reserved[0] = 1
    buf, start = private_buffer()
    worker_pid, _, hold_worker = in_child(lambda: [buf.__setitem__(p * PAGE, 1) for p in WRITTEN])
    try:
        def standby():
            tracemalloc.start()
            copied = prefault.take_faults_of(worker_pid)
            return copied, tracemalloc.get_traced_memory()[1]

        standby_pid, (copied, peak), hold_standby = in_child(standby)
        release(standby_pid, hold_standby)
    finally:
        release(worker_pid, hold_worker)
        reserved.close()
    assert isinstance(copied, int) and copied >= len(WRITTEN)
    assert peak < 8 << 20


def test_a_file_mapped_under_a_name_that_is_not_utf8_is_no_error(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"data-\xe9.bin")
    with open(path, "wb") as f:
        f.write(b"x" * PAGE)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ):
        buf, start = private_buffer()
        # Within one mapping, not equal to one: the kernel may merge it with an adjacent
        # anonymous mapping of the same flags.
        end = start + PAGES * PAGE
        assert any(low <= start and end <= high
                   for low, high in prefault.writable_private_mappings()), (start, end)


def test_a_private_file_mapping_still_follows_its_file_in_the_standby(tmp_path):
    # Linux: a page of a MAP_PRIVATE file mapping shows the file's later changes until
    # the process writes it; a copy made ahead would not (the worker-to-be could tell).
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * PAGE)
    with open(path, "r+b") as f:
        data = mmap.mmap(f.fileno(), PAGE, flags=mmap.MAP_PRIVATE)
    data[:1]  # present before the fork, shared after it

    def worker():
        data[0] = ord("w")

    worker_pid, _, hold_worker = in_child(worker)
    try:
        def standby():
            prefault.take_faults_of(worker_pid)
            with open(path, "r+b") as f:  # another process updates the file in place
                f.write(b"b")
            return data[:1]

        standby_pid, seen, hold_standby = in_child(standby)
        release(standby_pid, hold_standby)
    finally:
        release(worker_pid, hold_worker)
    assert seen == b"b"
