"""fork_safety with the libraries production apps load: real ones, on real servers
(PostgreSQL, Redis, HTTP, grpc: tests/services.py), set up at import the way their docs
show (tests/apps/libraries.py), through a refork under load."""
import re
import signal

import pytest

from conftest import LoadLoop, wait_for
from services import (  # noqa: F401 (fixtures)
    grpc_port, http_port, library, mariadb_port, postgres, redis_port,
)

# Each setup of tests/apps/libraries.py: the module it needs, and the servers.
SETUPS = {"otel": "opentelemetry.sdk", "sentry": "sentry_sdk", "numpy": "numpy",
          "torch": "torch", "sqlalchemy": "sqlalchemy", "psycopg": "psycopg",
          "psycopg2": "psycopg2", "pymysql": "pymysql", "mysqlclient": "MySQLdb",
          "sqlite": "sqlite3", "redis": "redis",
          "requests": "requests", "django": "django", "celery": "celery", "boto3": "boto3",
          "grpc": "grpc", "asyncio": "asyncio", "sqlite-memory": "sqlite3",
          "redis-single": "redis", "native-thread": "_thread", "grpc-closed": "grpc",
          "sqlite-garbage": "sqlite3"}
SERVERS = {"PG_URL": ("postgres", {"sqlalchemy", "psycopg", "psycopg2", "django"}),
           "MYSQL_PORT": ("mariadb_port", {"pymysql", "mysqlclient"}),
           "REDIS_PORT": ("redis_port", {"redis", "celery", "redis-single"}),
           "HTTP_PORT": ("http_port", {"requests", "boto3"}),
           "GRPC_PORT": ("grpc_port", {"grpc", "grpc-closed"})}

# The fix that fork safety names, as the docs show it.
CLOSE_IN_HOOKS = """
def on_preload(preloader):
    import app
    app.close_at_fork()


def pre_template_fork(worker):
    import app
    app.close_at_fork()
"""


@pytest.fixture
def libs_server(make_server, request):
    """libs_server("otel,numpy", config=..., env=...) -> a Server of tests/apps/libraries.py
    with fork_worker on; the libraries it needs are imported here first (or skipped)."""
    def make(libs, config="", env=None, **kwargs):
        names = set(libs.split(","))
        for name in names:
            library(SETUPS[name])
        env = {"LIBS": libs, **(env or {})}
        for var, (fixture, users) in SERVERS.items():
            if names & users:
                env[var] = str(request.getfixturevalue(fixture))
        server = make_server(app_file="libraries.py", config="fork_worker = True\n" + config,
                             env=env, **kwargs)
        # Real libraries import slowly: sentry_sdk.init() alone imports FastAPI, Django
        # and more for its integrations (2.5 s on an idle machine), ten times that on two
        # cores busy with the rest of the suite.
        server.ready_timeout = 60.0
        return server
    return make


def fork_safety(server, level):
    return re.findall(r"%s\] fork safety \((\w+)\): (.*)" % level, server.log())


def refork_under_load(server):
    """URG under load: every request succeeds, and the new workers serve."""
    with LoadLoop(server) as load:
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
        before = load.ok
        wait_for(lambda: load.ok > before + 20, timeout=20, what="traffic after the refork")
    assert load.failures == []
    assert server.get_ok()


def every_worker_serves(server):
    """Requests until each worker has served one (whichever becomes the template has)."""
    served = set()
    wait_for(lambda: served.add(server.get_json()["pid"]) or
             served >= set(server.worker_pids()), timeout=30, what="every worker to serve")


# Libraries that need nothing: noted at info (once, by the preloader), never blamed.
NOTED = {
    "otel": r"'OtelBatchSpanRecordProcessor' \(opentelemetry\.sdk\.[\w.]+\): OpenTelemetry's; "
            r"the SDK starts it again in each child",
    "sentry": r"'sentry-sdk\.BackgroundWorker' \(sentry_sdk\.[\w.]+\): Sentry's; the SDK "
              r"starts it again in a process whose pid changed",
    "numpy": r"unnamed native threads \(OpenBLAS: libscipy_openblas[\w.-]* loaded\): "
             r"OpenBLAS's; OpenBLAS stops its pool before fork",
    "redis": r"redis-py: a connection to localhost:\d+: its pool sees the new pid in each "
             r"worker and connects again",
    "celery": r"redis-py: a connection to 127\.0\.0\.1:\d+: its pool sees the new pid",
}


@pytest.mark.parametrize("libs", list(NOTED))
def test_a_library_that_takes_care_of_fork_is_noted_not_blamed(libs_server, libs):
    server = libs_server(libs, config='fork_safety = "strict"\n').start()
    infos = fork_safety(server, "INFO")
    assert [text for role, text in infos if re.match(NOTED[libs], text)], server.log()
    assert all(role == "preloader" for role, _ in infos), infos  # the template: nothing new
    refork_under_load(server)
    assert fork_safety(server, "WARNING") == []


# Libraries that keep something unsafe from import: what strict says (the library, the
# object, the fix), and the fix, after which nothing is said and a refork loses nothing.
BLAMED = {
    "sqlalchemy": (r"SQLAlchemy: the pool of engine postgresql\+psycopg://smartspawn@127\.0\.0"
                   r"\.1:\d+/postgres, holding 1 connection\(s\): every worker would use the "
                   r"same connection.*; engine\.dispose\(\) in the on_preload hook "
                   r"\(fork_recipes = True does it\)", "fork_recipes = True\n", {}),
    "django": (r"Django: database connection 'default' \(postgresql, 127\.0\.0\.1\): every "
               r"worker would use the same connection.*; django\.db\.connections\.close_all"
               r"\(\) in the on_preload hook", "fork_recipes = True\n", {}),
    "psycopg": (r"psycopg: a connection to 127\.0\.0\.1:\d+/postgres: every worker would use "
                r"the same connection.*; close it in the on_preload hook \(conn\.close\(\)\)",
                CLOSE_IN_HOOKS, {}),
    "psycopg2": (r"psycopg2: a connection to 127\.0\.0\.1:\d+/postgres: every worker would "
                 r"use the same connection.*; close it in the on_preload hook", CLOSE_IN_HOOKS,
                 {}),
    "pymysql": (r"PyMySQL: a connection to 127\.0\.0\.1:\d+: every worker would use the same "
                r"connection.*; close it in the on_preload hook", CLOSE_IN_HOOKS, {}),
    "mysqlclient": (r"mysqlclient: a connection to 127\.0\.0\.1:\d+: every worker would use the "
                    r"same connection.*; close it in the on_preload hook",
                    CLOSE_IN_HOOKS, {}),
    "sqlite": (r"sqlite3: an open connection to /\S+/app\.db: SQLite forbids carrying an open "
               r"connection across fork\(\).*; close it in the on_preload hook",
               CLOSE_IN_HOOKS, {}),
    "requests": (r"urllib3: a connection to 127\.0\.0\.1:\d+ \(pooled by requests, boto3 and "
                 r"others\): every worker would use the same connection.*session\.close\(\)",
                 CLOSE_IN_HOOKS, {}),
    "asyncio": (r"asyncio: an event loop that is not closed \(_UnixSelectorEventLoop\): every "
                r"worker would share its self-pipe.*loop\.close\(\)", CLOSE_IN_HOOKS, {}),
    "torch": (r"unnamed native threads \([^)]*GNU OpenMP: libgomp[\w.-]*[^)]* loaded\) "
              r"x\d+\): .* GNU OpenMP: its pool does not "
              r"survive fork.*set OMP_NUM_THREADS=1", "", {"OMP_NUM_THREADS": "1"}),
    "redis-single": (r"redis-py: a single-connection client's connection to localhost:\d+: "
                     r"every worker would use the same connection.*client\.close\(\)",
                     CLOSE_IN_HOOKS, {}),
    "grpc": (r"grpc: a channel to dns:///127\.0\.0\.1:\d+: grpc's threads and polling engine "
             r"do not survive fork.*set GRPC_ENABLE_FORK_SUPPORT=true", "",
             {"GRPC_ENABLE_FORK_SUPPORT": "true"}),
}


@pytest.mark.parametrize("libs", list(BLAMED))
def test_strict_refuses_what_is_unsafe_from_import_and_the_fix_it_names_works(
        libs_server, libs):
    said, fix_config, fix_env = BLAMED[libs]
    refused = libs_server(libs, config='fork_safety = "strict"\n').start(wait=False)
    assert refused.wait_exit(timeout=60) == 3
    assert re.search(r"fork_safety = 'strict': the preloader refuses to fork: .*" + said,
                     refused.log()), refused.log()
    # An object's sockets (a pool's, its driver's) are its own, not reported again bare.
    assert "is a socket connected to" not in refused.log()

    fixed = libs_server(libs, config='fork_safety = "strict"\n' + fix_config,
                        env=fix_env).start()
    refork_under_load(fixed)
    assert fork_safety(fixed, "WARNING") == []


def test_what_a_template_opened_while_serving_is_named_with_its_fix(libs_server):
    # boto3: a client made at import opens nothing; requests served through it do.
    server = libs_server("boto3", config='fork_safety = "strict"\n').start()
    every_worker_serves(server)
    assert fork_safety(server, "WARNING") == []
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) abandoned: the template \(pid: \d+\) gave "
                    r"up: fork_safety = 'strict': the template refuses to fork: urllib3: a "
                    r"connection to 127\.0\.0\.1:\d+ .*client\.close\(\) for boto3", timeout=30)
    assert server.get_ok()

    fixed = libs_server("boto3", config='fork_safety = "strict"\n' + CLOSE_IN_HOOKS).start()
    refork_under_load(fixed)
    assert fork_safety(fixed, "WARNING") == []


def test_strict_starts_a_production_stack_and_reforks_it(libs_server):
    """OpenTelemetry + Sentry + SQLAlchemy on PostgreSQL + numpy + redis-py, under strict:
    the recipes close the engine's connections, in the preloader and in the template."""
    server = libs_server("otel,sentry,sqlalchemy,numpy,redis",
                         config='fork_safety = "strict"\nfork_recipes = True\n').start()
    refork_under_load(server)
    assert fork_safety(server, "WARNING") == []
    assert server.wait_log(r"template \(pid: \d+, gen=2\) ready")


def test_what_is_safe_to_share_starts_under_strict(libs_server):
    """An in-memory SQLite database (no file, no lock), a connection that is garbage (in
    a cycle no one holds), and a grpc channel closed at import (a closed channel's target()
    crashes the process: it is not asked)."""
    server = libs_server("sqlite-memory,sqlite-garbage,grpc-closed",
                         config='fork_safety = "strict"\n',
                         env={"GRPC_ENABLE_FORK_SUPPORT": "true"}).start()
    refork_under_load(server)
    assert fork_safety(server, "WARNING") == []
    assert not [text for _, text in fork_safety(server, "INFO")
                if text.startswith(("sqlite3", "grpc: a channel"))]


def test_a_loaded_thread_pool_does_not_excuse_the_apps_own_threads(libs_server):
    # OpenBLAS's pool is granted its own threads, not every thread that has no name.
    server = libs_server("numpy,native-thread", config='fork_safety = "strict"\n')
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == 3
    assert re.search(r"refuses to fork: \d other thread\(s\) running \(.*native '[^']+' "
                     r"\(tid \d+\)", server.log()), server.log()

