"""Benchmark app: hello world, the per-request cost of the server itself.

GET <anything> -> "Hello, World!" (text/plain)
"""
BODY = b"Hello, World!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
