"""The harness itself: both servers start, serve, and stop with TERM and exit code 0."""
import signal


def test_both_serve_and_stop_cleanly(run_both):
    def scenario(server):
        server.start()
        body = server.get_json("/")
        return {"serves": body["version"], "exit": server.stop(signal.SIGTERM)}

    plain, smart = run_both(scenario)
    assert plain == {"serves": "v1", "exit": 0}
    assert smart == plain
