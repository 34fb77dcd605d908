"""Test app (ASGI): a request that blocks the event loop where a stack dump must find it.

GET /         -> {"pid"}
GET /stuck?S  -> blocks the loop S s inside stuck_in_the_export() -> {"pid"}
"""
import json
import os
import time


def stuck_in_the_export(seconds):
    time.sleep(seconds)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/stuck":
        stuck_in_the_export(float(scope["query_string"]))
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
