"""A FastAPI app: what is bound to a worker (a connection, a loop) is made in the lifespan."""
import os
import sqlite3
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

DATABASE = os.environ.get("DATABASE", os.path.join(os.path.dirname(__file__), "app.db"))


@asynccontextmanager
async def lifespan(app):
    # Runs in every worker, on its own event loop, and its shutdown runs before a worker
    # becomes a refork's template: nothing here crosses a fork. Never open connections
    # (or make asyncio objects) at import time: the import runs in the preloader.
    app.state.db = sqlite3.connect(DATABASE, check_same_thread=False)
    yield
    app.state.db.close()


app = FastAPI(lifespan=lifespan)


@app.get("/")
def index(request: Request):
    # A plain `def`: FastAPI runs it in a thread, off the event loop, as a blocking call should.
    (version,) = request.app.state.db.execute("SELECT sqlite_version()").fetchone()
    return {"pid": os.getpid(), "sqlite": version}
