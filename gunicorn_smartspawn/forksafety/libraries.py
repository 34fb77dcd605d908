"""What fork safety knows of the libraries production apps load (forksafety.py asks).

Three kinds of knowledge, each a table:

- whose a thread is, and whether its library starts it again after fork
  (`thread_owner`, `pool_libraries`): OpenTelemetry's export threads and Sentry's
  transport come back by themselves in every worker; a ThreadPoolExecutor's threads do not;
- which live objects are unsafe to share, found by type (`shared_objects`): an open
  sqlite3 connection, a DB-API connection, an SQLAlchemy pool holding connections, a
  urllib3 connection, a grpc channel, an asyncio loop; each with the library's own fix;
- the fork recipes that libraries document (`apply_recipes`): Django's
  `connections.close_all()` and SQLAlchemy's `engine.dispose()`, before a spawner forks.

Nothing here imports a library: a module that the app did not load has nothing to find.
"""
import ctypes
import gc
import os
import re
import socket
import sys
import weakref
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Owner:
    """The library a thread belongs to, and what happens to the thread in a forked child."""

    library: str
    after_fork: str  # what the library does in the child
    safe: bool  # it comes back by itself (or is not needed): nothing to fix
    fix: str = ""  # for an unsafe one; "{hook}" is the spawner's hook


def grpc_fork_support():
    """grpc's fork support is on (its documented environment variable)."""
    return os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").strip().lower() in ("1", "true")


def grpc_owner():
    if grpc_fork_support():
        return Owner("grpc", "grpc pauses it at fork and resumes it in each child "
                     "(GRPC_ENABLE_FORK_SUPPORT is set)", True)
    return Owner("grpc", "grpc's threads and polling engine do not survive fork: a channel "
                 "used in a worker can hang", False,
                 "set GRPC_ENABLE_FORK_SUPPORT=true in gunicorn's environment, or create "
                 "the channel in each worker (post_fork)")


UNSAFE_POOL = ("its threads are gone in every worker: work submitted there never runs, "
               "and a lock one held stays locked")

# Python threads, by the module of what they run (the longest matching prefix wins).
PYTHON_THREADS = {
    "opentelemetry.sdk": lambda: Owner(
        "OpenTelemetry", "the SDK starts it again in each child (os.register_at_fork)", True),
    "sentry_sdk": lambda: Owner(
        "Sentry", "the SDK starts it again in a process whose pid changed", True),
    "grpc": grpc_owner,
    "concurrent.futures": lambda: Owner(
        "concurrent.futures (a ThreadPoolExecutor)", UNSAFE_POOL, False,
        "shut the executor down in the {hook} hook, and make one per worker"),
    "psycopg_pool": lambda: Owner(
        "psycopg_pool", UNSAFE_POOL, False,
        "close the pool in the {hook} hook (pool.close()) and open one in each worker "
        "(post_fork)"),
}

# Threads started by C code, by the name the library gives them (/proc/self/task/*/comm,
# 15 characters at most).
def libuv_owner():
    return Owner("uvloop (libuv's thread pool)",
                 "libuv makes its pool again in a forked child (pthread_atfork)", True)


NATIVE_THREADS = {
    "libuv-worker": libuv_owner,
    "grpc_global_tim": grpc_owner, "event_engine": grpc_owner, "lifeguard": grpc_owner,
    "default-executo": grpc_owner, "resolver-execut": grpc_owner, "timer_manager": grpc_owner,
}

# Native thread pools that name no thread (their threads carry the name of the thread that
# started them), recognised by the library loaded (its file name).
POOL_LIBRARIES = {
    "openblas": lambda: Owner(
        "OpenBLAS", "OpenBLAS stops its pool before fork and starts it again in the child",
        True),
    "libgomp": lambda: Owner(
        "GNU OpenMP", "its pool does not survive fork: a worker's first parallel operation "
        "hangs (torch's matrix product does)", False,
        "set OMP_NUM_THREADS=1 in gunicorn's environment, so that the pool is never "
        "started (torch.set_num_threads(1) in post_fork keeps the workers from hanging, "
        "but its threads remain in the preloader or template: strict still refuses)"),
}
# How many threads OpenBLAS's pool has: its thread count but the caller's. The names of the
# function in OpenBLAS's builds (numpy's wheels carry scipy-openblas, 64-bit integers).
OPENBLAS_THREADS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads")


# asyncio's default executor (loop.run_in_executor(None, ...)) names its threads so.
ASYNCIO_EXECUTOR_THREAD = re.compile(r"asyncio_\d+\Z")


def asyncio_executor_owner():
    return Owner("asyncio (an event loop's default executor)", UNSAFE_POOL, False,
                 "close the loop in the {hook} hook (loop.run_until_complete("
                 "loop.shutdown_default_executor()), then loop.close()), and make the loop "
                 "in each worker: the ASGI workers make their own")


def thread_owner(module, name=""):
    """The Owner of a Python thread named `name` running code of `module`, or None (the
    app's)."""
    if module.startswith("concurrent.futures") and ASYNCIO_EXECUTOR_THREAD.match(name):
        return asyncio_executor_owner()
    while module:
        if module in PYTHON_THREADS:
            return PYTHON_THREADS[module]()
        module = module.rpartition(".")[0]
    return None


def native_thread_owner(name):
    owner = NATIVE_THREADS.get(name)
    return owner() if owner else None


def pool_libraries(mapped_paths):
    """{path: Owner} of the native thread pools among the mapped files."""
    found = {}
    for path in mapped_paths:
        for key, owner in POOL_LIBRARIES.items():
            if key in os.path.basename(path):
                found[path] = owner()
    return found


GEVENT_THREADPOOL = Owner("gevent", "gevent makes a new pool in each child (gevent.reinit)",
                          True)


def gevent_threadpool_size():
    """The threads of gevent's hub's pool, which names none; 0 when gevent made none."""
    hub_local = sys.modules.get("gevent._hub_local")
    hub = hub_local.get_hub_if_exists() if hub_local is not None else None
    pool = getattr(hub, "_threadpool", None)
    return pool.size if pool is not None else 0


def pool_size(path):
    """The number of threads of the pool of the library at `path` (loaded), or None."""
    try:
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    except OSError:
        return None
    for name in OPENBLAS_THREADS:
        function = getattr(library, name, None)
        if function is not None:
            function.restype = ctypes.c_int
            return max(function() - 1, 0)
    return None


# -- objects ------------------------------------------------------------------------------

@dataclass
class SharedObject:
    """A live object that every worker forked now would inherit."""

    library: str
    what: str  # the object, as its owner would recognise it
    after_fork: str
    fix: str  # "{hook}" is the spawner's hook
    safe: bool = False
    fds: tuple = ()  # its sockets: reported as this object, not as bare fds
    peers: tuple = ()  # (host, port) its sockets connect to, when its fds are not known
    holds: tuple = ()  # ids of the objects it holds: reported with it, not alone
    key: object = field(default=None, compare=False)  # id() of the object


SHARED_CONNECTION = ("every worker would use the same connection: their queries and "
                     "replies interleave on one socket")
SQLITE_ACROSS_FORK = ("SQLite forbids carrying an open connection across fork(): locks and "
                      "journal state would be shared by every worker")
CLOSE_AND_RECONNECT = ("close it in the {hook} hook and connect again in each worker "
                       "(post_fork, or on first use)")


def fileno(sock):
    try:
        return (sock.fileno(),) if sock is not None and sock.fileno() >= 0 else ()
    except (OSError, ValueError):
        return ()


def sqlite_connection(conn):
    try:
        conn.in_transaction  # noqa: B018 (raises once closed; from any thread)
    except Exception:
        return None
    try:
        # The database's file. No attribute tells it: a query, which runs the
        # connection's trace callback if it has one.
        name = conn.execute("PRAGMA database_list").fetchone()[2]
    except Exception:  # another thread's (check_same_thread), or busy: open, name unknown
        name = "?"
    if not name:
        return None  # in memory: no file, no lock; each worker has its own copy
    return SharedObject("sqlite3", "an open connection to %s" % name, SQLITE_ACROSS_FORK,
                        CLOSE_AND_RECONNECT, fds=fds_open_on(name))


def fds_open_on(path):
    """The fds open on `path` or on its journal (-journal, -wal, -shm): a database's files,
    reported as its connection, not as bare files."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        if target == path or target.startswith(path + "-"):
            fds.append(int(name))
    return tuple(fds)


def postgres_connection(conn):
    """psycopg's (3) and psycopg2's connections."""
    if conn.closed:
        return None
    info = conn.info
    psycopg3 = hasattr(conn, "pgconn")
    return SharedObject(
        "psycopg" if psycopg3 else "psycopg2",
        "a connection to %s:%s/%s" % (info.host, info.port, info.dbname), SHARED_CONNECTION,
        "close it in the {hook} hook (conn.close()) and connect again in each worker"
        + ("; with a psycopg_pool pool, open the pool in post_fork" if psycopg3 else ""),
        fds=(conn.pgconn.socket if psycopg3 else conn.fileno(),))


MYSQL_LIBRARIES = {"pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}


def mysql_connection(conn):
    """PyMySQL's and mysqlclient's (MySQLdb) connections: the same attributes, mostly."""
    if not conn.open:
        return None
    library = MYSQL_LIBRARIES.get(type(conn).__module__.partition(".")[0], "MySQL")
    sock = getattr(conn, "_sock", None)  # PyMySQL's; mysqlclient's connection has fileno()
    fds = fileno(sock) if sock is not None else (conn.fileno(),)
    return SharedObject(library, "a connection to %s:%s" % (conn.host, conn.port),
                        SHARED_CONNECTION,
                        "close it in the {hook} hook (conn.close()) and connect again in "
                        "each worker", fds=fds)


def sqlalchemy_engine(engine):
    pool = engine.pool
    if not hasattr(pool, "checkedin"):
        return None  # NullPool, StaticPool...: what they hold is found by its driver
    count = pool.checkedin() + pool.checkedout()
    if not count:
        return None
    records = list(getattr(getattr(pool, "_pool", None), "queue", ()))
    held = [getattr(r, "dbapi_connection", None) or getattr(r, "connection", None)
            for r in records]
    if engine.dialect.is_async:  # an AsyncEngine's: its dispose() must be awaited
        fix = ("asyncio.run(engine.dispose()) in the {hook} hook (fork_recipes does not: it "
               "cannot await)")
    else:
        fix = "engine.dispose() in the {hook} hook (fork_recipes = True does it)"
    return SharedObject(
        "SQLAlchemy", "the pool of engine %s, holding %d connection(s)"
        % (engine.url.render_as_string(hide_password=True), count), SHARED_CONNECTION, fix,
        holds=tuple(id(c) for c in held if c))


def django_connection(wrapper):
    if wrapper.connection is None:
        return None
    settings = wrapper.settings_dict
    return SharedObject(
        "Django", "database connection %r (%s, %s)" % (
            wrapper.alias, wrapper.vendor, settings.get("HOST") or settings.get("NAME")),
        SQLITE_ACROSS_FORK if wrapper.vendor == "sqlite" else SHARED_CONNECTION,
        "django.db.connections.close_all() in the {hook} hook (fork_recipes = True closes "
        "every thread's)", holds=(id(wrapper.connection),))


def redis_connection(conn):
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return None
    where = getattr(conn, "path", None) or "%s:%s" % (conn.host, conn.port)
    return SharedObject(
        "redis-py", "a connection to %s" % where,
        "its pool sees the new pid in each worker and connects again; the inherited socket "
        "is left unused", "nothing to do; client.connection_pool.disconnect() in the {hook} "
        "hook keeps the socket out of the workers", safe=True, fds=fileno(sock))


def redis_own_connection(holder):
    """A client with single_connection_client=True, or a PubSub: it uses its connection
    without asking the pool, so nothing notices the fork."""
    conn = getattr(holder, "connection", None)
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return None
    what = "a PubSub's connection" if type(holder).__name__ == "PubSub" else \
        "a single-connection client's connection"
    return SharedObject(
        "redis-py", "%s to %s" % (what, getattr(conn, "path", None)
                                   or "%s:%s" % (conn.host, conn.port)), SHARED_CONNECTION,
        "close it in the {hook} hook (client.close()) and make one in each worker",
        fds=fileno(sock), holds=(id(conn),))


def urllib3_connection(conn):
    sock = getattr(conn, "sock", None)
    if sock is None:
        return None
    return SharedObject(
        "urllib3", "a connection to %s:%s (pooled by requests, boto3 and others)"
        % (conn.host, conn.port), SHARED_CONNECTION,
        "close the pool in the {hook} hook: session.close() for requests, client.close() "
        "for boto3, PoolManager.clear() for urllib3", fds=fileno(sock))


def grpc_channel(channel):
    """grpc's core channel: what its multi-callables keep (the Python Channel may be gone)."""
    try:
        channel.check_connectivity_state(False)
    except ValueError:
        return None  # closed (and target() on a closed channel crashes the process)
    owner = grpc_owner()
    target = channel.target().decode(errors="replace")
    host, _, port = target.rpartition("/")[2].rpartition(":")
    return SharedObject("grpc", "a channel to %s" % target, owner.after_fork, owner.fix,
                        safe=owner.safe, peers=addresses(host.strip("[]"), port))


def addresses(host, port):
    """((ip, port), ...) for an IP address or localhost; nothing for another name: a DNS
    lookup could hang the check."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, ValueError):
        return ()
    return tuple((info[4][0], info[4][1]) for info in infos)


def asyncio_loop(loop):
    if loop.is_closed():
        return None
    fds = fileno(getattr(loop, "_ssock", None)) + fileno(getattr(loop, "_csock", None))
    selector = getattr(loop, "_selector", None)
    if selector is not None:
        fds += (selector.fileno(),)
    return SharedObject(
        "asyncio", "an event loop that is not closed (%s)" % type(loop).__name__,
        "every worker would share its self-pipe and selector, and the objects bound to it "
        "(locks, queues, clients) belong to a loop no worker runs",
        "close it in the {hook} hook (loop.close()) and make the loop, and what is bound to "
        "it, in each worker", fds=fds)


# (module, class name in it, inspector): a class is looked up only once its module is
# loaded; subclasses are found too.
FINDERS = (
    ("sqlite3", "Connection", sqlite_connection),
    ("psycopg", "BaseConnection", postgres_connection),  # and AsyncConnection
    ("psycopg2.extensions", "connection", postgres_connection),
    ("pymysql.connections", "Connection", mysql_connection),
    ("MySQLdb.connections", "Connection", mysql_connection),
    ("sqlalchemy.engine", "Engine", sqlalchemy_engine),
    ("django.db.backends.base.base", "BaseDatabaseWrapper", django_connection),
    ("redis.connection", "AbstractConnection", redis_connection),
    ("redis.connection", "Connection", redis_connection),  # redis-py < 5
    ("redis.client", "Redis", redis_own_connection),
    ("redis.client", "PubSub", redis_own_connection),
    ("urllib3.connection", "HTTPConnection", urllib3_connection),
    ("grpc._cython.cygrpc", "Channel", grpc_channel),
    ("asyncio.events", "AbstractEventLoop", asyncio_loop),  # and uvloop's
)
# Classes written in C: their instances do not all refer to their class (as a Python
# class's do, through which gc.get_referrers() finds them, ~5x faster than a pass in
# Python over every object); with one of these loaded, every object is looked at.
# (sqlite3's connection does on 3.11, not on 3.13 and later.)
C_CLASSES = {("sqlite3", "Connection"), ("psycopg2.extensions", "connection"),
             ("grpc._cython.cygrpc", "Channel")}


def loaded_classes():
    """({id(class): (class, inspector)} for every loaded class of the finders and their
    subclasses, whether one of them is written in C). By id: a type may not hash."""
    watched, written_in_c = {}, False
    for module_name, class_name, inspector in FINDERS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if not isinstance(cls, type) or id(cls) in watched:
            continue
        written_in_c |= (module_name, class_name) in C_CLASSES
        for subclass in with_subclasses(cls):
            watched.setdefault(id(subclass), (subclass, inspector))
    return watched, written_in_c


def with_subclasses(cls):
    found, todo = [], [cls]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo.extend(type.__subclasses__(current))
        except TypeError:  # an odd metaclass
            continue
    return found


# In a spawner's children: what its scan found (weak references where the object allows).
# gc.get_objects() and gc.get_referrers() leave out what is frozen: a template looks at
# what it made since the preloader froze its heap, plus these, and writes to no page of
# that heap (a pass over every object would, by counting references: copy-on-write).
_found_before: list = []


def live_objects():
    """[(object, inspector)]: the live objects of the finders' classes, in one pass."""
    watched, written_in_c = loaded_classes()
    if not watched:
        return []
    if written_in_c:
        candidates = gc.get_objects()
    else:
        candidates = gc.get_referrers(*(cls for cls, _ in watched.values()))
    before = [ref() if isinstance(ref, weakref.ref) else ref for ref in _found_before]
    found, seen = [], set()
    for obj in [*before, *candidates]:
        entry = watched.get(id(type(obj)))
        if entry is not None and id(obj) not in seen:
            seen.add(id(obj))
            found.append((obj, entry[1]))
    return found


def remember(objects, shared):
    """What a spawner found (live_objects()), for those forked from it to look at again: by
    weak reference, or, for an object that allows none, only if it was reported (`shared`:
    its SharedObjects), not to keep alive what the app dropped."""
    reported = {s.key for s in shared}
    kept = []
    for obj, _ in objects:
        try:
            kept.append(weakref.ref(obj))
        except TypeError:
            if id(obj) in reported:
                kept.append(obj)
    _found_before[:] = kept


def shared_objects(objects):
    """The SharedObjects among `objects` (live_objects()), held ones under their holder."""
    found = []
    for obj, inspector in objects:
        try:
            shared = inspector(obj)
        except Exception:  # noqa: BLE001 (a library's internals changed: nothing to say)
            continue
        if shared is not None:
            shared.key = id(obj)
            found.append(shared)
    by_key = {shared.key: shared for shared in found}
    held = set()
    for shared in found:
        for key in shared.holds:
            if key in by_key:  # its socket is the holder's
                shared.fds += by_key[key].fds
                held.add(key)
    return [shared for shared in found if shared.key not in held]


# -- recipes --------------------------------------------------------------------------------

def apply_recipes(log, role, objects):
    """fork_recipes = True: what Django's and SQLAlchemy's docs say to do before a fork, to
    the live objects found (live_objects())."""
    django = sys.modules.get("django.db.backends.base.base")
    sqlalchemy = sys.modules.get("sqlalchemy.engine")
    for obj, _ in objects:
        try:
            if django is not None and isinstance(obj, django.BaseDatabaseWrapper):
                close_django_connection(obj, log, role)
            elif sqlalchemy is not None and isinstance(obj, sqlalchemy.Engine):
                dispose_engine(obj, log, role)
        except Exception:  # noqa: BLE001 (the others are still applied; the check says)
            log.exception("fork recipes (%s): %r failed", role, obj)


def close_django_connection(wrapper, log, role):
    """connections.close_all() closes the calling thread's connections only; a template's
    served requests in gthread's threads, gone now: their connections are closed too."""
    if wrapper.connection is None:
        return
    wrapper.inc_thread_sharing()  # its thread is gone: this one may close it
    try:
        wrapper.close()
    finally:
        wrapper.dec_thread_sharing()
    log.debug("fork recipes (%s): closed Django's database connection %r", role,
              wrapper.alias)


def dispose_engine(engine, log, role):
    url = engine.url.render_as_string(hide_password=True)
    if engine.dialect.is_async:
        log.debug("fork recipes (%s): %s is an AsyncEngine's: not disposed (it must be "
                  "awaited)", role, url)
        return
    engine.dispose()  # closes the pool's connections; the workers start a new pool
    log.debug("fork recipes (%s): %s.dispose()", role, url)
