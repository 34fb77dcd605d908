"""Real servers for the library tests: PostgreSQL, MariaDB and Redis (Debian's packages), an HTTP
server and a grpc server, each started once per test run on an ephemeral loopback port
and stopped by pid at its end.

Without the server or the library, a test is skipped; with SMARTSPAWN_REQUIRE_LIBRARIES
set (as .ci/run does), it fails instead: CI must not pass by skipping.
"""
import glob
import http.server
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REQUIRED = bool(os.environ.get("SMARTSPAWN_REQUIRE_LIBRARIES"))


def unavailable(what):
    if REQUIRED:
        pytest.fail("%s is required (SMARTSPAWN_REQUIRE_LIBRARIES) but missing" % what)
    pytest.skip("%s is not installed" % what)


def library(name):
    """Skip (or fail) unless `name` can be imported; found, not imported: the servers
    import it, this process need not."""
    try:
        found = importlib.util.find_spec(name)
    except ImportError:
        found = None
    if found is None:
        unavailable("the library %s" % name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("%s exited with %s" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("%s did not listen on %d" % (what, port))


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def postgres_binary(name):
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/%s" % name)) or [shutil.which(name)]
    return found[-1]


@pytest.fixture(scope="session")
def postgres():
    """postgresql://smartspawn@127.0.0.1:PORT/postgres (trust authentication)."""
    initdb, server = postgres_binary("initdb"), postgres_binary("postgres")
    if not initdb or not server:
        unavailable("PostgreSQL (Debian's postgresql package)")
    # Not under pytest's temporary directory: root's, private; the postgres user must enter.
    data = Path(tempfile.mkdtemp(prefix="smartspawn-postgres-"))
    os.chmod(data, 0o755)
    run_as = []
    if os.getuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, initdb, "-D", str(data / "db"), "-A", "trust", "-U",
                    "smartspawn"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen([*run_as, server, "-D", str(data / "db"), "-p", str(port),
                             "-k", str(data), "-c", "listen_addresses=127.0.0.1",
                             "-c", "fsync=off", "-c", "max_connections=200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "postgres")
        time.sleep(0.5)  # it listens a moment before it accepts logins
        yield "postgresql://smartspawn@127.0.0.1:%d/postgres" % port
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_port():
    """A MariaDB server (Debian's mariadb-server) without grants: any user logs in."""
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd")
    if not install or not server:
        unavailable("MariaDB (Debian's mariadb-server package)")
    data = Path(tempfile.mkdtemp(prefix="smartspawn-mariadb-"))
    os.chmod(data, 0o755)
    user = ["--user=mysql"] if os.getuid() == 0 else []
    if user:
        mysql = pwd.getpwnam("mysql")
        os.chown(data, mysql.pw_uid, mysql.pw_gid)
    subprocess.run([install, "--datadir=%s" % (data / "db"), "--skip-test-db",
                    "--auth-root-authentication-method=normal", *user], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen([server, "--no-defaults", "--datadir=%s" % (data / "db"),
                             "--port=%d" % port, "--bind-address=127.0.0.1",
                             "--socket=%s" % (data / "sock"), "--skip-grant-tables", *user],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "mariadbd")
        yield port
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_port():
    binary = shutil.which("redis-server")
    if not binary:
        unavailable("Redis (Debian's redis-server package)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "redis-server")
        yield port
    finally:
        stop(proc)


class Handler(http.server.BaseHTTPRequestHandler):
    """200 with an S3 ListBuckets answer (boto3 parses it; requests does not care)."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients pool the connection
    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult><Owner><ID>o'
            b'</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>')

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def grpc_port():
    """A grpc server (in this process) with /test.Echo/Echo, bytes in, bytes out."""
    library("grpc")
    import grpc
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)
