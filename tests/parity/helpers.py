"""What several parity cases share."""
import re
import time


def boot(server, timeout=20.0):
    """Start `server`; True once all its workers are up and it answers, False if the
    master exits first or it does not serve within `timeout` seconds."""
    server.start(wait=False)

    def ready():
        if server.exited() is not None:
            return True
        if server.port is None:
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", server.log())
            if not match:
                return False
            server.port = int(match.group(1))
        return len(server.worker_pids()) >= server.expected_workers() and server.get_ok()

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return server.exited() is None


def is_smart(server):
    return server.worker_class.startswith("smartspawn")
