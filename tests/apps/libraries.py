"""Test app that sets up real libraries at import the way their docs show, and uses each
one in every request (a 500 names the one that failed).

LIBS: a comma-separated list of the setups below. `close_at_fork()` applies, for the
setups that keep something unsafe from import, the fix that fork safety names (for the
on_preload and pre_template_fork hooks); their next request opens it again.

Servers: PG_URL (PostgreSQL, as postgresql://user@host:port/db), MYSQL_PORT, REDIS_PORT, HTTP_PORT
(any HTTP server), GRPC_PORT (a grpc server with /test.Echo/Echo).
"""
import json
import os

LIBS = set(filter(None, os.environ.get("LIBS", "").split(",")))
PG_URL = os.environ.get("PG_URL", "")
USES = {}  # name -> a function run in every request
CLOSERS = []  # what close_at_fork() runs


def setup(name):
    def register(function):
        if name in LIBS:
            USES[name] = function()
        return function
    return register


@setup("otel")
def otel():
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter, PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(
        ConsoleMetricExporter(out=open(os.devnull, "w")), export_interval_millis=60000)]))
    tracer = trace.get_tracer("app")
    counter = metrics.get_meter("app").create_counter("requests")

    def use():
        with tracer.start_as_current_span("request"):
            counter.add(1)
        return True
    return use


@setup("sentry")
def sentry():
    import sentry_sdk

    # A DSN nobody listens at: the transport's sends fail quietly, its thread runs.
    sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", traces_sample_rate=1.0)
    sentry_sdk.capture_message("imported")

    def use():
        sentry_sdk.capture_message("request")
        return True
    return use


@setup("numpy")
def numpy():
    import numpy as np

    matrix = np.ones((300, 300))
    matrix @ matrix  # starts OpenBLAS's pool

    def use():
        return float((matrix @ matrix)[0, 0])
    return use


@setup("torch")
def torch():
    import torch as th

    matrix = th.ones(300, 300)
    matrix @ matrix  # starts the OpenMP pool

    def use():
        return float((matrix @ matrix)[0, 0])
    return use


@setup("sqlalchemy")
def sqlalchemy():
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:  # the pool keeps this connection
        conn.execute(sa.text("SELECT 1"))

    def use():
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    return use


@setup("psycopg")
def psycopg():
    import psycopg as pg

    conns = [pg.connect(PG_URL)]  # kept from import: unsafe
    CLOSERS.append(lambda: conns and conns.pop().close())

    def use():
        if not conns:
            conns.append(pg.connect(PG_URL))
        return conns[0].execute("SELECT 1").fetchone()[0]
    return use


@setup("psycopg2")
def psycopg2():
    import psycopg2 as pg2

    conns = [pg2.connect(PG_URL)]  # kept from import: unsafe
    CLOSERS.append(lambda: conns and conns.pop().close())

    def use():
        if not conns:
            conns.append(pg2.connect(PG_URL))
        with conns[0].cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0]
    return use


@setup("pymysql")
def pymysql():
    import pymysql as my

    def connect():
        return my.connect(host="127.0.0.1", port=int(os.environ["MYSQL_PORT"]), user="root")
    conns = [connect()]  # kept from import: unsafe
    CLOSERS.append(lambda: conns and conns.pop().close())

    def use():
        if not conns:
            conns.append(connect())
        with conns[0].cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0]
    return use


@setup("mysqlclient")
def mysqlclient():
    import MySQLdb

    def connect():
        return MySQLdb.connect(host="127.0.0.1", port=int(os.environ["MYSQL_PORT"]),
                               user="root")
    conns = [connect()]  # kept from import: unsafe
    CLOSERS.append(lambda: conns and conns.pop().close())

    def use():
        if not conns:
            conns.append(connect())
        cursor = conns[0].cursor()
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]
    return use


@setup("sqlite")
def sqlite():
    import sqlite3

    path = os.path.join(os.environ["TEST_DIR"], "app.db")
    conns = [sqlite3.connect(path, check_same_thread=False)]  # kept from import: unsafe
    conns[0].execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
    conns[0].commit()
    CLOSERS.append(lambda: conns and conns.pop().close())

    def use():
        if not conns:
            conns.append(sqlite3.connect(path, check_same_thread=False))
        return conns[0].execute("SELECT count(*) FROM hits").fetchone()[0]
    return use


@setup("redis")
def redis():
    import redis as rd

    client = rd.Redis(port=int(os.environ["REDIS_PORT"]))
    client.ping()

    def use():
        return client.incr("hits")
    return use


@setup("sqlite-memory")
def sqlite_memory():
    import sqlite3

    conn = sqlite3.connect(":memory:", check_same_thread=False)  # no file: safe to fork
    conn.execute("CREATE TABLE cities (name TEXT)")
    conn.execute("INSERT INTO cities VALUES ('Paris')")

    def use():
        return conn.execute("SELECT name FROM cities").fetchone()[0]
    return use


@setup("sqlite-garbage")
def sqlite_garbage():
    import gc
    import sqlite3

    class Holder:
        pass

    gc.disable()  # until the first request: the garbage stays until a collection
    holder = Holder()
    holder.me = holder  # a cycle: garbage once dropped, freed by a collection only
    holder.conn = sqlite3.connect(os.path.join(os.environ["TEST_DIR"], "gone.db"))
    del holder

    def use():
        gc.enable()
        return True
    return use


@setup("redis-single")
def redis_single():
    import redis as rd

    # Uses its connection without asking the pool: nothing notices the fork.
    client = rd.Redis(port=int(os.environ["REDIS_PORT"]), single_connection_client=True)
    client.ping()
    clients = [client]
    CLOSERS.append(lambda: clients and clients.pop().close())

    def use():
        if not clients:
            clients.append(rd.Redis(port=int(os.environ["REDIS_PORT"]),
                                    single_connection_client=True))
        return clients[0].incr("hits")
    return use


@setup("native-thread")
def native_thread():
    import _thread
    import time

    _thread.start_new_thread(time.sleep, (3600,))  # the app's own, unnamed

    def use():
        return True
    return use


@setup("grpc-closed")
def grpc_closed():
    import grpc as gr

    global CHANNEL
    with gr.insecure_channel("127.0.0.1:%s" % os.environ["GRPC_PORT"]) as CHANNEL:
        CHANNEL.unary_unary("/test.Echo/Echo")(b"imported", timeout=5)

    def use():
        return True
    return use


@setup("requests")
def requests():
    import requests as rq

    session = rq.Session()
    url = "http://127.0.0.1:%s/" % os.environ["HTTP_PORT"]
    session.get(url).raise_for_status()  # the pool keeps the connection
    CLOSERS.append(session.close)  # the next request opens a new pool

    def use():
        return session.get(url).status_code
    return use


@setup("django")
def django():
    import django as dj
    from django.conf import settings
    from urllib.parse import urlsplit

    url = urlsplit(PG_URL)
    settings.configure(DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"),
        "USER": url.username, "HOST": url.hostname, "PORT": str(url.port)}})
    dj.setup()
    from django.db import connection

    with connection.cursor() as cursor:  # Django keeps the connection open
        cursor.execute("SELECT 1")

    def use():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]
    return use


@setup("celery")
def celery():
    from celery import Celery

    producer = Celery("app", broker="redis://127.0.0.1:%s/1" % os.environ["REDIS_PORT"])
    producer.send_task("tasks.imported")  # connects to the broker

    def use():
        return producer.send_task("tasks.request").id
    return use


@setup("boto3")
def boto3():
    import boto3 as b3

    s3 = b3.client("s3", region_name="us-east-1", aws_access_key_id="key",
                   aws_secret_access_key="secret",
                   endpoint_url="http://127.0.0.1:%s" % os.environ["HTTP_PORT"])
    CLOSERS.append(s3.close)  # what a template opened while serving

    def use():
        return len(s3.list_buckets()["Buckets"])
    return use


@setup("grpc")
def grpc():
    import grpc as gr

    channel = gr.insecure_channel("127.0.0.1:%s" % os.environ["GRPC_PORT"])
    echo = channel.unary_unary("/test.Echo/Echo")
    echo(b"imported", timeout=5)

    def use():
        return echo(b"request", timeout=5).decode()
    return use


@setup("asyncio")
def asyncio():
    import asyncio as aio

    loops = [aio.new_event_loop()]  # kept from import: unsafe
    loops[0].run_until_complete(aio.sleep(0))
    CLOSERS.append(lambda: loops and loops.pop().close())

    def use():
        if not loops:
            loops.append(aio.new_event_loop())
        return loops[0].run_until_complete(aio.sleep(0, result=True))
    return use


def close_at_fork():
    for close in CLOSERS:
        close()


def app(environ, start_response):
    results = {}
    try:
        for name, use in USES.items():
            results[name] = use()
        status = "200 OK"
    except Exception as exc:
        results["error"] = "%s: %s: %s" % (name, type(exc).__name__, exc)
        status = "500 Internal Server Error"
    body = json.dumps({"pid": os.getpid(), **results}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
