"""The copy-on-write faults of a new worker, taken by its standby before its orders come.

A worker forked from a spawner writes, while it boots and answers its first request,
to about 900 pages it shares with the spawner (reference counts of gunicorn's and the
app's objects, the interpreter's own state): each write copies a page, 3.5-5 µs each on
the development machine, about 3.6 ms of a 9 ms spawn (docs/benchmarks/spawn-profile.md).
The pages are nearly the same from one worker to the next, so a standby asks the kernel
to copy, ahead of need, the pages its spawner's previous worker has written
(MADV_POPULATE_WRITE: no byte changes, so nothing the app could see). Where this cannot be
read or done (a kernel before 5.14; `user` set: the preloader changed its user, so its
processes are not dumpable and their page maps are refused), the worker takes its faults
as before.
"""
import re

from gunicorn_smartspawn.shared import _linux

PAGE = 4096
PRESENT_EXCLUSIVE = 0x81  # pagemap bits 63 and 56, in an entry's high byte
# A worker that wrote more than this (in its first 100 ms) is unusual: copying it all into
# every standby would cost more memory than the faults cost time.
MAX_PAGES = 8192  # 32 MiB
# The page map is read this many pages at a time (1 MiB of it, 512 MiB of address space):
# a mapping reserved large and barely used (MAP_NORESERVE, a big calloc) would otherwise
# be read whole into memory, 2 GiB for 1 TiB.
CHUNK = 1 << 17
_EXCLUSIVE = bytes(1 if byte & PRESENT_EXCLUSIVE == PRESENT_EXCLUSIVE else 0
                   for byte in range(256))
_RUN = re.compile(rb"\x01+")


class RequestWaiting(Exception):
    """A spawn request came: the standby stops copying and takes it."""


def writable_private_mappings(pid="self"):
    """[(start, end)] of the process's private writable mappings: anonymous ones (heap,
    arenas, stack) and the .data of the libraries and the program. Not another file's: a
    page of a private file mapping follows the file's later changes until it is written,
    and would not once copied (a library is not changed in place while it runs)."""
    # Bytes: a mapped file's name need not be UTF-8.
    with open("/proc/%s/maps" % pid, "rb") as maps:
        lines = [line.split(None, 5) for line in maps]
    code = {fields[5] for fields in lines if len(fields) > 5 and fields[1][2:3] == b"x"}
    mappings = []
    for fields in lines:
        name = fields[5].strip() if len(fields) > 5 else b""
        if fields[1][1:2] == b"w" and fields[1][3:4] == b"p" and (
                not name or (name.startswith(b"[") and name not in (
                    b"[vvar]", b"[vdso]", b"[vsyscall]")) or fields[5] in code):
            start, end = fields[0].split(b"-")
            mappings.append((int(start, 16), int(end, 16)))
    return mappings


def written_pages(worker_pid, mappings, limit=None, request_waiting=lambda: False):
    """[(start, length)] of the pages in `mappings` (ours) that `worker_pid` holds
    privately: the ones it wrote since it was forked from the same spawner. Once more
    than `limit` pages are found, the rest is not read. RequestWaiting once
    `request_waiting()`, asked between reads."""
    runs = []
    pages = 0
    with open("/proc/%s/pagemap" % worker_pid, "rb") as pagemap:
        for start, end in mappings:
            for chunk in range(start, end, CHUNK * PAGE):
                if request_waiting():
                    raise RequestWaiting
                pagemap.seek(chunk // PAGE * 8)
                flags = pagemap.read(min(end - chunk, CHUNK * PAGE) // PAGE * 8)[7::8]
                for run in _RUN.finditer(flags.translate(_EXCLUSIVE)):
                    runs.append((chunk + run.start() * PAGE, (run.end() - run.start()) * PAGE))
                    pages += run.end() - run.start()
                if limit is not None and pages > limit:
                    return runs
    return runs


def take_faults_of(worker_pid, request_waiting=lambda: False):
    """In a standby: copy the pages `worker_pid` wrote. -> pages copied, or why not.
    Stops once `request_waiting()`: a page map read, or a copy, must not delay a spawn (a
    large mapping barely used takes seconds to read: 1.4 s for 256 GiB)."""
    try:
        runs = written_pages(worker_pid, writable_private_mappings(), MAX_PAGES,
                             request_waiting)
    except RequestWaiting:
        return "a spawn request came while the previous worker's pages were read"
    except OSError as exc:  # gone since; not ours to read (another user)
        return "the previous worker's pages cannot be read: %s" % exc
    pages = sum(length for _, length in runs) // PAGE
    if pages > MAX_PAGES:
        return "the previous worker wrote more than %d pages" % MAX_PAGES
    try:
        for start, length in runs:
            if request_waiting():
                return "a spawn request came while the pages were copied"
            _linux.populate_write(start, length)
    except OSError as exc:
        return "madvise(MADV_POPULATE_WRITE) failed: %s" % exc
    return pages
