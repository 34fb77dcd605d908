"""Parity of what a worker holds and passes on to the programs the app runs.

1. test_no_fd_passes_into_programs_the_app_runs: with fork_worker (each worker has a
   channel to the master), no fd above 2 is inheritable, as in gunicorn: every fd a
   worker receives, its channel included, must be O_CLOEXEC.
2. test_signal_dispositions_match_gunicorn: the signals a worker ignores, and those a
   program it runs ignores, are gunicorn's. SIG_IGN survives fork and exec, so a worker
   forked from the template must not keep a disposition the template or master set
   (e.g. for TTIN and TTOU), or the programs the app starts inherit it.
"""
URG_ONLY = "fork_worker = 10**9\n"


def test_no_fd_passes_into_programs_the_app_runs(run_both):
    def scenario(server):
        server.start()
        seen = {tuple(server.get_json("/fds")["inheritable"]) for _ in range(6)}
        return {"inheritable": sorted(seen), "exit": server.stop()}

    plain, smart = run_both(scenario, app_file="parity_state.py", config=URG_ONLY)
    assert plain == {"inheritable": [()], "exit": 0}
    assert smart == plain


def test_signal_dispositions_match_gunicorn(run_both):
    def scenario(server):
        server.start()
        seen = {tuple(server.get_json("/sigign").items()) for _ in range(6)}
        return {"sigign": sorted(seen), "exit": server.stop()}

    plain, smart = run_both(scenario, app_file="parity_state.py", config=URG_ONLY)
    assert plain["exit"] == 0 and len(plain["sigign"]) == 1
    assert smart == plain
