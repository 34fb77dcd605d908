"""Test app in the ASGI 2 style (a class built from the scope), which uvicorn adapts.

GET / -> {"pid", "asgi": 2}
"""
import json
import os


class app:  # noqa: N801 (the name gunicorn is given: app:app)
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = json.dumps({"pid": os.getpid(), "asgi": 2}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
