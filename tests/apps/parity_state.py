"""Test app: what a worker process holds and passes on.

GET /fds      -> {"inheritable": [fd, ...]}: fds above 2 a program the app runs would get
GET /sigign   -> {"worker": mask, "child": mask}: SigIgn of this worker and of a child
                 program it starts (SIG_IGN survives exec)
"""
import json
import os
import subprocess


def sigign(status_text):
    return next(line.split()[1] for line in status_text.splitlines()
                if line.startswith("SigIgn:"))


def app(environ, start_response):
    if environ["PATH_INFO"] == "/fds":
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        body = {"inheritable": [fd for fd in fds if fd > 2 and _inheritable(fd)]}
    else:
        with open("/proc/self/status") as f:
            worker = sigign(f.read())
        child = subprocess.run(["cat", "/proc/self/status"], capture_output=True,
                               text=True, check=True).stdout
        body = {"worker": worker, "child": sigign(child)}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]


def _inheritable(fd):
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False  # the listdir's own fd, closed since
