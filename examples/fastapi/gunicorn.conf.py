# A production gunicorn.conf.py for a FastAPI app under smartspawn.
#
#   cd examples/fastapi && gunicorn        (gunicorn reads ./gunicorn.conf.py)
#
# Deploying it (systemd, Docker, Kubernetes, nginx): docs/deploy.md.
import os

wsgi_app = "app:app"
# uvicorn-worker's worker, forked from a preloader (pip install "gunicorn_smartspawn[uvicorn]");
# "smartspawn.ASGIWorker" is gunicorn's own asgi worker and needs nothing more.
worker_class = "smartspawn.UvicornWorker"
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

# Refork after 1000, 10,000 and 100,000 requests of worker-0 (or on `kill -URG`). The
# candidate stops like a worker told to stop (its requests finish, its lifespan shutdown
# runs), then forks the next generation, which runs its own lifespan startup.
fork_worker = [1000, 10000, 100000]

# The garbage collector runs between requests, on the worker's loop, not inside them.
oob_gc = True

# No fork_recipes and no closing hooks: the app opens its connection in the lifespan,
# which runs in each worker and is shut down before a template forks
# (docs/event-loop-workers.md).
