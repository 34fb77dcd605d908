"""Test app that breaks the rule for ASGI apps: it makes and uses an event loop at import
(its default executor's thread included) and a lock bound to it.

GET / -> {"ok": true}
"""
import asyncio

from fastapi import FastAPI

loop = asyncio.new_event_loop()
lock = asyncio.Lock()
loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2]))

app = FastAPI()


@app.get("/")
async def root():
    return {"ok": True}
