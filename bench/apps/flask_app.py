"""Benchmark app: a Flask shop with a heavy import and a lazily filled page cache.

Importing it does what a real framework app does at start: Flask, Jinja2 and a handful
of stdlib modules are imported, a product catalogue is built in memory (FLASK_APP_PRODUCTS
products, default 60 000: ~45 MB of dicts, lists and strings) with a search index, and
the templates are compiled. Pages are rendered on first use and kept in a per-process
cache that fills as traffic reaches more products (a "lazily filled cache"): each worker
fills its own, unless it was forked from a process that already had it.

GET /                -> {"hello": "world", "pid"} through Flask's routing and jsonify
GET /product/<id>    -> the product's HTML page (Jinja2), cached per process after the
                        first render; ids 1..FLASK_APP_PRODUCTS
GET /search?q=<tag>  -> JSON list of up to 20 products with that tag
GET /stats           -> {"pid", "cached_pages", "products", "import_seconds"}
"""
import collections  # noqa: F401  (imported for its import cost, like an app would)
import csv  # noqa: F401
import decimal  # noqa: F401
import email.parser  # noqa: F401
import logging.handlers  # noqa: F401
import os
import random
import sqlite3  # noqa: F401
import time
import uuid  # noqa: F401

_started = time.perf_counter()

from flask import Flask, abort, jsonify, render_template, request  # noqa: E402
from jinja2 import DictLoader  # noqa: E402

PRODUCTS = int(os.environ.get("FLASK_APP_PRODUCTS", "60000"))
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
         "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa"]

PAGE = """<!doctype html>
<html><head><title>{{ p.name }} - shop</title></head>
<body>
<h1>{{ p.name }}</h1>
<p class="price">{{ "%.2f"|format(p.price) }} EUR</p>
<p>{{ p.description }}</p>
<ul>{% for tag in p.tags %}<li><a href="/search?q={{ tag }}">{{ tag }}</a></li>{% endfor %}</ul>
<h2>Related</h2>
<ul>{% for r in related %}<li><a href="/product/{{ r.id }}">{{ r.name }}</a>
 ({{ "%.2f"|format(r.price) }})</li>{% endfor %}</ul>
</body></html>
"""


def build_catalogue(n):
    rng = random.Random(42)
    products = {}
    by_tag = {}
    for i in range(1, n + 1):
        tags = sorted({rng.choice(WORDS) for _ in range(3)})
        products[i] = {
            "id": i, "name": "Product %06d" % i, "price": round(rng.uniform(1, 500), 2),
            "tags": tags, "stock": {"count": i % 300, "warehouse": "wh-%d" % (i % 7)},
            "description": " ".join(rng.choice(WORDS) for _ in range(20)),
        }
        for tag in tags:
            by_tag.setdefault(tag, []).append(i)
    return products, by_tag


CATALOGUE, BY_TAG = build_catalogue(PRODUCTS)
app = Flask(__name__)
app.jinja_loader = DictLoader({"product.html": PAGE})
app.jinja_env.get_template("product.html")  # compiled once, at import
PAGE_CACHE = {}  # product id -> rendered page, filled lazily, per process
IMPORT_SECONDS = time.perf_counter() - _started


@app.route("/")
def hello():
    return jsonify(hello="world", pid=os.getpid())


@app.route("/product/<int:product_id>")
def product(product_id):
    page = PAGE_CACHE.get(product_id)
    if page is None:
        p = CATALOGUE.get(product_id) or abort(404)
        related = [CATALOGUE[i] for i in BY_TAG[p["tags"][0]][:8]]
        page = render_template("product.html", p=p, related=related)
        PAGE_CACHE[product_id] = page
    return page


@app.route("/search")
def search():
    ids = BY_TAG.get(request.args.get("q", ""), [])[:20]
    return jsonify([{"id": i, "name": CATALOGUE[i]["name"], "price": CATALOGUE[i]["price"]}
                    for i in ids])


@app.route("/stats")
def stats():
    return jsonify(pid=os.getpid(), cached_pages=len(PAGE_CACHE), products=len(CATALOGUE),
                   import_seconds=IMPORT_SECONDS)
