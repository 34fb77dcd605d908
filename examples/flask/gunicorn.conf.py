# A production gunicorn.conf.py for a Flask app under smartspawn.
#
#   cd examples/flask && gunicorn        (gunicorn reads ./gunicorn.conf.py)
#
# Deploying it (systemd, Docker, Kubernetes, nginx): docs/deploy.md.
import os

wsgi_app = "app:app"
worker_class = "smartspawn.Worker"   # with threads > 1: gunicorn's gthread worker
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = 4
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

# Refork after 1000, 10,000 and 100,000 requests of worker-0 (or on `kill -URG`): the
# workers are forked again from a warmed one, sharing what the app built since the import.
fork_worker = [1000, 10000, 100000]

# The garbage collector runs between requests, not inside them.
oob_gc = True

# Before the preloader and each template fork: engine.dispose() on every SQLAlchemy
# engine (and Django's connections.close_all()). The import left a connection in the
# engine's pool, and a template's request threads left theirs; each worker's pool
# starts empty and connects on first use.
fork_recipes = True

# fork_recipes knows SQLAlchemy and Django: close anything else connected to a server
# (a client kept from import) in the on_preload and pre_template_fork hooks, and let each
# worker connect again (docs/fork-safety.md).
