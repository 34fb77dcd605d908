"""Test app for the ASGI workers: FastAPI, with asyncio objects made in its lifespan.

At import: one line "<pid>" in imports.txt (the app is imported once, by the preloader).
Lifespan: "startup <pid>" / "shutdown <pid>" lines in lifespan.txt; the startup makes a
queue, a lock, an event and a task that feeds the queue, all on the running loop.

GET /             -> {"pid", "own_loop"}: the lifespan's objects work on this request's
                     loop (the queue is awaited, the lock taken, the task still running)
GET /garbage?n=N  -> makes N reference cycles
GET /gc           -> {"pid", "in_request": [generations], "between": [generations]}
GET /oob?value=V  -> 200 with the header X-Smartspawn-OOB-Work: V
GET /sleep?s=S    -> sleeps S seconds first (a line in sleeping.txt when it starts)
GET /stream?s=S   -> streams "<pid>\n" at once, then a line every 0.1 s for S seconds
WS  /ws           -> echoes each text message as "<pid> <message>"

`failing`: an app whose lifespan startup fails.
"""
import asyncio
import gc
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

TEST_DIR = os.environ["TEST_DIR"]
COLLECTIONS = []  # (pid, generation, in_request)
IN_FLIGHT = 0

with open(os.path.join(TEST_DIR, "imports.txt"), "a") as f:
    f.write("%d\n" % os.getpid())


def record(line):
    with open(os.path.join(TEST_DIR, "lifespan.txt"), "a") as f:
        f.write("%s %d\n" % (line, os.getpid()))


def on_gc(phase, info):
    if phase == "start":
        COLLECTIONS.append((os.getpid(), info["generation"], IN_FLIGHT > 0))


gc.callbacks.append(on_gc)


async def feed(queue):
    while True:
        await queue.put(1)
        await asyncio.sleep(0.005)


@asynccontextmanager
async def lifespan(app):
    app.state.loop = asyncio.get_running_loop()
    app.state.queue = asyncio.Queue(maxsize=1)
    app.state.lock = asyncio.Lock()
    app.state.event = asyncio.Event()
    app.state.feeder = asyncio.create_task(feed(app.state.queue))
    record("startup")
    yield
    app.state.feeder.cancel()
    record("shutdown")


app = FastAPI(lifespan=lifespan)


@app.middleware("http")
async def count_in_flight(request, call_next):
    global IN_FLIGHT
    IN_FLIGHT += 1
    try:
        return await call_next(request)
    finally:
        IN_FLIGHT -= 1


@app.get("/")
async def root():
    state = app.state
    loop = asyncio.get_running_loop()
    # Each of these raises "is bound to a different event loop" on another loop.
    await asyncio.wait_for(state.queue.get(), 5)
    async with state.lock:
        state.event.set()
        await state.event.wait()
    own = (state.loop is loop and state.feeder.get_loop() is loop
           and not state.feeder.done())
    return {"pid": os.getpid(), "own_loop": own}


@app.get("/garbage")
async def garbage(n: int = 1000):
    for _ in range(n):
        a = []
        b = [a]
        a.append(b)
    return {"pid": os.getpid()}


@app.get("/gc")
async def collections():
    mine = [(g, inside) for pid, g, inside in COLLECTIONS if pid == os.getpid()]
    return {"pid": os.getpid(), "in_request": [g for g, inside in mine if inside],
            "between": [g for g, inside in mine if not inside]}


@app.get("/oob")
async def oob(value: str = "true"):
    return Response(content=b'{"oob": true}', media_type="application/json",
                    headers={"X-Smartspawn-OOB-Work": value})


@app.get("/sleep")
async def sleep(s: float = 1.0):
    with open(os.path.join(TEST_DIR, "sleeping.txt"), "a") as f:
        f.write("%d\n" % os.getpid())
    await asyncio.sleep(s)
    return {"pid": os.getpid(), "slept": s}


@app.get("/stream")
async def stream(s: float = 3.0):
    async def lines():
        yield b"%d\n" % os.getpid()
        for _ in range(int(s * 10)):
            await asyncio.sleep(0.1)
            yield b".\n"
    return StreamingResponse(lines(), media_type="text/plain")


@app.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text("%d %s" % (os.getpid(), message))
    except WebSocketDisconnect:
        pass


@asynccontextmanager
async def failing_lifespan(app):
    raise RuntimeError("the database is not there")
    yield


failing = FastAPI(lifespan=failing_lifespan)
