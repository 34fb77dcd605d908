"""The master holds its state directory open (state.held): `smartspawn status` finds it
among the master's open files."""
import os

from gunicorn_smartspawn.shared import state


def test_the_directory_stays_held_and_a_new_one_is_held_in_its_place(tmp_path):
    directory = tmp_path / "smartspawn-0"
    directory.mkdir()
    fd = state.held(str(directory))
    try:
        assert os.readlink("/proc/self/fd/%d" % fd) == str(directory)
        assert state.held(str(directory), fd) == fd
        directory.rmdir()
        directory.mkdir()  # removed and made again (a /tmp cleaner, then the master)
        fd = state.held(str(directory), fd)
        assert os.readlink("/proc/self/fd/%d" % fd) == str(directory)
        assert os.path.samestat(os.fstat(fd), os.stat(directory))
    finally:
        os.close(fd)
