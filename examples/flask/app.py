"""A Flask app with an SQLAlchemy engine on SQLite, set up at import like most apps do."""
import os

from flask import Flask
from sqlalchemy import create_engine, text

DATABASE_URL = os.environ.get(
    "DATABASE_URL", "sqlite:///" + os.path.join(os.path.dirname(__file__), "app.db"))

engine = create_engine(DATABASE_URL)

# Schema and seed data at import: this leaves an open connection in the engine's pool,
# in the preloader. gunicorn.conf.py's fork_recipes disposes of it before the fork.
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE IF NOT EXISTS greeting (id INTEGER PRIMARY KEY, text TEXT)"))
    conn.execute(text("INSERT OR IGNORE INTO greeting VALUES (1, 'hello')"))

app = Flask(__name__)


@app.get("/")
def index():
    with engine.connect() as conn:
        greeting = conn.execute(text("SELECT text FROM greeting WHERE id = 1")).scalar_one()
    return {"pid": os.getpid(), "greeting": greeting}
