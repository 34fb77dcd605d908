# A production gunicorn.conf.py for a Django project under smartspawn.
#
#   cd examples/django && gunicorn        (gunicorn reads ./gunicorn.conf.py)
#
# Deploying it (systemd, Docker, Kubernetes, nginx): docs/deploy.md.
import os

wsgi_app = "mysite.wsgi"
worker_class = "smartspawn.Worker"   # gunicorn's sync worker, forked from a preloader
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
bind = os.environ.get("BIND", "127.0.0.1:8000")   # nginx in front; "0.0.0.0:8000" in a container
forwarded_allow_ips = "127.0.0.1,::1"   # who may set X-Forwarded-*: nginx's address
timeout = 30
graceful_timeout = 20  # below what stops the server (systemd's TimeoutStopSec, k8s's grace period)
accesslog = "-"
# /metrics for Prometheus and /healthz for probes, served by the master
# (pip install "gunicorn-smartspawn[metrics]"; "0.0.0.0:9187" in a container):
# metrics_bind = "127.0.0.1:9187"

# Recycle workers now and then; each one serves until its replacement serves.
max_requests = 20000
max_requests_jitter = 2000
max_worker_memory = "512MB"   # its private memory (USS): shared pages do not count;
                              # in a container, "10%" is a share of its memory limit

# Refork: once worker-0 has served 1000 requests, the warmed worker becomes the template
# and the others are forked again from it, sharing what Django built since the import
# (URL resolvers, templates, lazily imported modules); again at 10,000 and 100,000 as
# the sharing wears off. `kill -URG <master pid>` reforks at any time.
fork_worker = [1000, 10000, 100000]

# The garbage collector runs between requests, not inside them.
oob_gc = True


# A database connection must not cross a fork: every worker would use the same socket
# (or, for SQLite, the same locks and journal). Close Django's connections where the
# forks happen; each worker opens its own on its first query.
# (`fork_recipes = True` does this too, for every thread's connections: use it instead
# with `threads = N`, where a template's connections were opened by its request threads.)
def on_preload(preloader):
    """In the preloader, once the app is imported (an AppConfig.ready() that queried)."""
    from django.db import connections
    connections.close_all()


def pre_template_fork(worker):
    """In the worker that becomes the template, before it forks the next generation:
    with CONN_MAX_AGE > 0 it still holds the connection it served with."""
    from django.db import connections
    connections.close_all()
