"""The memory cgroup a process runs in: what it uses and the limit it may not pass.

A container's memory limit is the limit of its memory cgroup, and the kernel's OOM killer
acts on the cgroup's usage, which counts each page once: pages the workers share with the
preloader or the template are charged once, however many processes map them.

Read from the files the kernel publishes, as seen from the reading process:

- ``/proc/PID/cgroup`` names the process's cgroup in each hierarchy, relative to the
  root of the reader's cgroup namespace;
- ``/proc/self/mountinfo`` says where the reader has each hierarchy mounted, and which
  part of it (its root, relative to the same namespace root);
- cgroup v2 (one hierarchy, ``0::/path``): ``memory.current`` and ``memory.max``
  (``max``: no limit); v1 (a hierarchy with the ``memory`` controller):
  ``memory.usage_in_bytes`` and ``memory.limit_in_bytes``, where no limit reads as the
  largest page-aligned 63-bit number.

The limit that applies is the lowest along the path to the root of the mount: a process
in a child group of a container's group is limited by the container's limit too.
"""
import os
from typing import NamedTuple

# v1's "unlimited": PAGE_COUNTER_MAX pages, LONG_MAX rounded down to the page size
# (2**63 - 4096 with 4 KiB pages). 64 KiB, the largest page size Linux has, rounds lower.
V1_UNLIMITED = (2 ** 63 - 1) // 65536 * 65536


class CgroupMemory(NamedTuple):
    version: int              # 1 or 2
    path: str                 # the cgroup, as /proc/PID/cgroup names it
    usage_bytes: int
    limit_bytes: int | None   # None: no limit up to the root of the hierarchy


# (version, the file with the usage, the file with the limit)
FILES = {1: ("memory.usage_in_bytes", "memory.limit_in_bytes"),
         2: ("memory.current", "memory.max")}


def memory_of(pid, root="/"):
    """The memory cgroup of process `pid` (CgroupMemory), or None when it has none the
    reader can see: no memory controller, or the hierarchy is not mounted here.

    `root`: where /proc and the cgroup mounts are (tests give a fake tree). Raises
    OSError when `pid` does not exist or its files cannot be read.
    """
    version, path = cgroup_of(os.path.join(root, "proc/%d/cgroup" % pid))
    if version is None:
        return None
    directory = mounted_at(os.path.join(root, "proc/self/mountinfo"), version, path)
    if directory is None:
        return None
    directory = os.path.join(root, directory.lstrip("/"))
    usage_file, limit_file = FILES[version]
    try:
        usage = read_number(os.path.join(directory, usage_file))
    except FileNotFoundError:
        return None  # v2 without the memory controller enabled for this group
    return CgroupMemory(version, path, usage, lowest_limit(directory, limit_file))


def cgroup_of(proc_cgroup):
    """(version, path) of the memory cgroup in a /proc/PID/cgroup file; (None, None)
    when there is none. A v1 memory hierarchy wins over v2's: on a hybrid system the
    memory controller is bound to v1 and v2's hierarchy has none."""
    unified = None
    with open(proc_cgroup) as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and controllers == "":
                unified = path
            elif "memory" in controllers.split(","):
                return 1, path
    return (2, unified) if unified is not None else (None, None)


def mounted_at(mountinfo, version, path):
    """The directory of cgroup `path` under the reader's mount of its hierarchy; None
    when that hierarchy is not mounted, or `path` lies outside the mounted part."""
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            dash = fields.index("-")
            fstype, super_options = fields[dash + 1], fields[dash + 3].split(",")
            if not (version == 2 and fstype == "cgroup2"
                    or version == 1 and fstype == "cgroup" and "memory" in super_options):
                continue
            mount_root, mountpoint = unescape(fields[3]), unescape(fields[4])
            relative = os.path.relpath(path, mount_root)
            if relative == ".":
                return mountpoint
            if not relative.startswith(".."):
                return os.path.join(mountpoint, relative)
    return None


def unescape(field):
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"),
                          ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def lowest_limit(directory, limit_file):
    """The lowest limit from `directory` up to the mount's root; None when none is set."""
    limit = None
    while True:
        try:
            value = read_number(os.path.join(directory, limit_file))
        except FileNotFoundError:
            break  # the hierarchy's root (v2 has no memory.max there)
        if value is not None and (limit is None or value < limit):
            limit = value
        parent = os.path.dirname(directory)
        if parent == directory or not os.path.exists(os.path.join(parent, "cgroup.procs")):
            break  # above the mount: not a cgroup
        directory = parent
    return limit


def read_number(path):
    """The number in a cgroup file; None for no limit ("max", or v1's huge number)."""
    with open(path) as f:
        text = f.read().strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= V1_UNLIMITED else value
