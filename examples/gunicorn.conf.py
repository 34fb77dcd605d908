# Example: gunicorn -k smartspawn.Worker -c examples/gunicorn.conf.py examples.hello:app
bind = "127.0.0.1:8000"
workers = 4
control_socket = "/tmp/smartspawn-example.ctl"

# smartspawn settings (the defaults, spelled out)
spawn_method = "smart"   # "direct" = gunicorn's own behaviour
gc_freeze = True         # gc.collect() + gc.freeze() in the preloader before forking


def on_preload(preloader):
    # Runs in the preloader once the app is imported: close shared connections here.
    preloader.log.info("app loaded in preloader pid %s (generation %s)",
                       preloader.pid, preloader.generation)


def post_fork(server, worker):
    worker.log.info("worker %s forked from the %s (pid %s)",
                    worker.pid, worker.spawned_from, worker.spawner_pid)
