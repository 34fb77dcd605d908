"""memory_of() on fake /proc and /sys/fs/cgroup trees, cgroup v1 and v2."""
import pytest

from gunicorn_smartspawn.shared import cgroup
from gunicorn_smartspawn.shared.cgroup import CgroupMemory

PID = 4321
V1_UNLIMITED_4K = 2 ** 63 - 4096       # what a 4 KiB-page kernel writes
V1_UNLIMITED_64K = 2 ** 63 - 65536     # ... a 64 KiB-page one (arm64, ppc64)
MOUNTS_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
MOUNTS_V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def tree(tmp_path, proc_cgroup, mountinfo, files):
    """A fake root: /proc/PID/cgroup, /proc/self/mountinfo and {path: content}; every
    directory holding a memory file is a cgroup (it has cgroup.procs)."""
    (tmp_path / "proc" / str(PID)).mkdir(parents=True)
    (tmp_path / "proc" / str(PID) / "cgroup").write_text(proc_cgroup)
    (tmp_path / "proc" / "self").mkdir()
    (tmp_path / "proc" / "self" / "mountinfo").write_text(mountinfo)
    for path, content in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        (target.parent / "cgroup.procs").write_text("")
    return str(tmp_path)


def v1_group(base, usage, limit):
    return {base + "/memory.usage_in_bytes": "%d\n" % usage,
            base + "/memory.limit_in_bytes": "%d\n" % limit}


def test_v1_usage_and_limit(tmp_path):
    root = tree(tmp_path, "9:name=systemd:/\n4:memory:/app/web\n0::/\n", MOUNTS_V1, {
        **v1_group("/sys/fs/cgroup/memory", 900 << 20, V1_UNLIMITED_4K),
        **v1_group("/sys/fs/cgroup/memory/app", 300 << 20, V1_UNLIMITED_4K),
        **v1_group("/sys/fs/cgroup/memory/app/web", 200 << 20, 512 << 20)})
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(1, "/app/web", 200 << 20,
                                                            512 << 20)


@pytest.mark.parametrize("unlimited", [V1_UNLIMITED_4K, V1_UNLIMITED_64K])
def test_v1_unlimited_up_to_the_root_is_no_limit(tmp_path, unlimited):
    root = tree(tmp_path, "4:memory:/app\n", MOUNTS_V1, {
        **v1_group("/sys/fs/cgroup/memory", 900 << 20, unlimited),
        **v1_group("/sys/fs/cgroup/memory/app", 300 << 20, unlimited)})
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(1, "/app", 300 << 20, None)


def test_v1_the_lowest_limit_on_the_way_up_applies(tmp_path):
    """A process in a child group of a container's group: the container's limit."""
    root = tree(tmp_path, "4:memory:/docker/abc/child\n", MOUNTS_V1, {
        **v1_group("/sys/fs/cgroup/memory", 900 << 20, V1_UNLIMITED_4K),
        **v1_group("/sys/fs/cgroup/memory/docker/abc", 300 << 20, 1 << 30),
        **v1_group("/sys/fs/cgroup/memory/docker/abc/child", 100 << 20, V1_UNLIMITED_4K)})
    assert cgroup.memory_of(PID, root=root).limit_bytes == 1 << 30


def test_v1_mounted_from_inside_the_group_as_in_a_container(tmp_path):
    """Docker without a cgroup namespace: /proc/PID/cgroup says /docker/abc, and the
    container has only that part of the hierarchy mounted, at /sys/fs/cgroup/memory."""
    mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    root = tree(tmp_path, "4:memory:/docker/abc\n", mounts,
                v1_group("/sys/fs/cgroup/memory", 64 << 20, 256 << 20))
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(1, "/docker/abc", 64 << 20,
                                                            256 << 20)
    # A group outside the mounted part cannot be read here.
    (tmp_path / "proc" / str(PID) / "cgroup").write_text("4:memory:/docker/other\n")
    assert cgroup.memory_of(PID, root=root) is None


def test_v2_usage_and_limit(tmp_path):
    root = tree(tmp_path, "0::/system.slice/web.service\n", MOUNTS_V2, {
        "/sys/fs/cgroup/memory.stat": "",  # the root has no memory.current/max
        "/sys/fs/cgroup/system.slice/memory.current": "%d\n" % (700 << 20),
        "/sys/fs/cgroup/system.slice/memory.max": "max\n",
        "/sys/fs/cgroup/system.slice/web.service/memory.current": "%d\n" % (150 << 20),
        "/sys/fs/cgroup/system.slice/web.service/memory.max": "%d\n" % (1 << 30)})
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(
        2, "/system.slice/web.service", 150 << 20, 1 << 30)


def test_v2_max_everywhere_is_no_limit_and_the_parent_limit_applies(tmp_path):
    files = {"/sys/fs/cgroup/kubepods/memory.current": "1\n",
             "/sys/fs/cgroup/kubepods/memory.max": "max\n",
             "/sys/fs/cgroup/kubepods/pod1/memory.current": "%d\n" % (80 << 20),
             "/sys/fs/cgroup/kubepods/pod1/memory.max": "max\n"}
    root = tree(tmp_path, "0::/kubepods/pod1\n", MOUNTS_V2, files)
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(2, "/kubepods/pod1", 80 << 20,
                                                            None)
    (tmp_path / "sys/fs/cgroup/kubepods/memory.max").write_text("%d\n" % (2 << 30))
    assert cgroup.memory_of(PID, root=root).limit_bytes == 2 << 30


def test_v2_in_a_cgroup_namespace_the_group_is_the_root(tmp_path):
    root = tree(tmp_path, "0::/\n", MOUNTS_V2, {
        "/sys/fs/cgroup/memory.current": "%d\n" % (10 << 20),
        "/sys/fs/cgroup/memory.max": "%d\n" % (100 << 20)})
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(2, "/", 10 << 20, 100 << 20)


def test_no_memory_cgroup(tmp_path):
    # v2 without the memory controller for this group: no memory.current.
    root = tree(tmp_path, "0::/user.slice\n", MOUNTS_V2,
                {"/sys/fs/cgroup/user.slice/cgroup.controllers": "cpu pids\n"})
    assert cgroup.memory_of(PID, root=root) is None
    # v1 without a memory hierarchy, and only v2 not mounted.
    (tmp_path / "proc" / str(PID) / "cgroup").write_text("3:cpu:/\n0::/\n")
    (tmp_path / "proc" / "self" / "mountinfo").write_text(MOUNTS_V1.splitlines()[0] + "\n")
    assert cgroup.memory_of(PID, root=root) is None


def test_a_mount_point_with_a_space(tmp_path):
    mounts = "35 31 0:32 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n"
    root = tree(tmp_path, "4:memory:/a\n", mounts, v1_group("/mnt/my cgroups/a", 5, 4096))
    assert cgroup.memory_of(PID, root=root) == CgroupMemory(1, "/a", 5, 4096)


def test_a_process_that_does_not_exist(tmp_path):
    root = tree(tmp_path, "0::/\n", MOUNTS_V2, {})
    with pytest.raises(FileNotFoundError):
        cgroup.memory_of(PID + 1, root=root)
