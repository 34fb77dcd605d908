"""FastAPI benchmark app for bench/eventloop.py (smartspawn.ASGIWorker, -k asgi,
smartspawn.UvicornWorker, -k uvicorn_worker.UvicornWorker). Heaps: eventloop_core.py.

GET /          "Hello, World!" (text/plain)
GET /pid       {"pid", "ppid", "import_seconds", "records"}
GET /hold?fifo=PATH   blocks the worker's loop until a byte is written into PATH (a named
               pipe); PATH.pid tells which worker it holds
GET /cache[?lookups=K]  lazy_cache's answer (the first one in a process builds the cache)
GET /garbage   leaves OOB_BENCH_CYCLES rows of cyclic garbage
Every handler is `async def`: it runs on the loop, as the work of an asyncio app does.
"""
import eventloop_core
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

app = FastAPI()


@app.get("/")
async def hello():
    return PlainTextResponse(eventloop_core.HELLO)


@app.get("/pid")
async def pid():
    return eventloop_core.identity()


@app.get("/hold")
async def hold(fifo: str):
    return eventloop_core.hold(fifo)


@app.get("/cache")
async def cache(request: Request):
    return JSONResponse(eventloop_core.cache(request.url.query))


@app.get("/garbage")
async def garbage():
    return eventloop_core.garbage()
