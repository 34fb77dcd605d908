"""The master's published state: which process is which, for `smartspawn status`.

The master rewrites one small JSON file (atomically, at most once a second) in a
per-user directory, which it keeps open (held), named after its pid; `smartspawn status`
reads it and adds what the kernel knows (memory, start time). Roles and request counts
therefore come from the server itself, never from guessing at the process tree.
"""
import json
import os
import stat
import tempfile
import time

import psutil

VERSION = 3  # 3: the versions, busy, in_flight, last_request, last_heartbeat


def dir_name(uid):
    return "smartspawn-%d" % uid


def state_dir():
    return os.path.join(tempfile.gettempdir(), dir_name(os.getuid()))


def state_path(master_pid, directory=None):
    return os.path.join(directory or state_dir(), "%d.json" % master_pid)


def private_dir(directory, create=False, owner=None):
    """`directory` if it is a real directory of ours (or of uid `owner`) that nobody
    else may write to.

    /tmp is shared: another user may have put a file, a symlink or a directory of theirs
    at our path. Such a path is never followed, written or cleaned (OSError).
    """
    owner = os.geteuid() if owner is None else owner
    if create:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or st.st_mode & 0o022:
        raise OSError("%s is not a directory of uid %d that only it can write to"
                      % (directory, owner))
    return directory


def write(path, state):
    private_dir(os.path.dirname(path), create=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".state-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # a full disk: leave nothing behind to pile up every second
        raise


def read(path):
    with open(path) as f:
        state = json.load(f)
    if state.get("version") != VERSION:
        raise ValueError("state file %s has version %r, expected %r"
                         % (path, state.get("version"), VERSION))
    return state


def held(directory, fd=None):
    """An fd open on `directory`: `fd` if it still is, else a new one (`fd` closed).

    The master keeps its state directory open so that `smartspawn status` can find it
    among its open files (/proc/PID/fd), whatever the master's TMPDIR or mount namespace:
    its TMPDIR cannot be read from outside (setproctitle overwrites /proc/PID/environ),
    and under systemd's PrivateTmp=true its /tmp is not the caller's.
    """
    if fd is not None:
        if os.path.samestat(os.fstat(fd), os.stat(directory)):
            return fd
        os.close(fd)  # the directory was removed (and made again): hold the new one
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def remove(path):
    """Remove a state file, only from a directory private_dir accepts: never through
    another user's link or directory."""
    try:
        private_dir(os.path.dirname(path))
        os.unlink(path)
    except OSError:
        pass  # gone already, or not ours to touch


def remove_stale(directory=None):
    """Remove the state files of masters that died without cleaning up (SIGKILL)."""
    directory = directory or state_dir()
    try:
        names = os.listdir(private_dir(directory))
    except OSError:
        return  # none yet, or not ours: nothing of ours to clean
    for name in names:
        stem = name[:-len(".json")]
        if name.endswith(".json") and stem.isdigit() and not pid_alive(int(stem)):
            remove(os.path.join(directory, name))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_rows(server_state):
    """One dict per process of `server_state` (the state file's content) that still
    runs: its fields plus the kernel's figures. psutil.AccessDenied: not ours to read."""
    rows = []
    for entry in server_state["processes"]:
        try:
            proc = psutil.Process(entry["pid"])
            with proc.oneshot():
                memory = proc.memory_full_info()
                started = proc.create_time()
                cpu = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue  # exited since the server wrote its state
        rows.append({**entry, "age_seconds": round(time.time() - started, 1),
                     "cpu_seconds": round(cpu.user + cpu.system, 2),
                     "rss": memory.rss, "pss": memory.pss, "uss": memory.uss,
                     "shared": memory.rss - memory.uss})
    return rows


def total_pss(pids):
    """The sum of PSS over `pids` (bytes); processes that exited meanwhile count 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total

