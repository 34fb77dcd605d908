"""The package's layout stays the process tree, with no import cycles.

A module imports only modules below it: the master (arbiter, its parts, patches) over the
spawners (preloader, template, spawner) over the workers (worker, oob) over the shared
records (protocol, config, counters, ...). The package's __init__ is the one module that
may import them all: it is what `-k smartspawn.Worker` loads.
"""
import ast
from pathlib import Path

import gunicorn_smartspawn

PACKAGE = Path(gunicorn_smartspawn.__file__).parent


def imported_modules(path):
    """The package's modules that `path` imports, at module level or inside a function."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "gunicorn_smartspawn":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(a.name for a in node.names if a.name in names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "gunicorn_smartspawn" and len(parts) > 1:
                    found.add(parts[1])
    return found


def import_graph():
    return {p.stem: imported_modules(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycles():
    graph = import_graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: %s" % " -> ".join(
                path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for dependency in sorted(graph.get(module, ())):
            visit(dependency)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_workers_know_nothing_of_the_master_or_the_spawners():
    graph = import_graph()
    upper = {"arbiter", "patches", "spawnerpool", "workertable", "refork", "lifecycle",
             "preloader", "template", "spawner"}
    for module in ("worker", "oob", "forkgate", "forksafety", "protocol", "config",
                   "counters", "state"):
        assert not graph[module] & upper, (module, graph[module] & upper)


def test_every_gunicorn_patch_is_in_patches():
    # An assignment to an attribute of a gunicorn object, anywhere else, is a patch.
    for path in PACKAGE.glob("*.py"):
        if path.stem == "patches":
            continue
        tree = ast.parse(path.read_text())
        gunicorn_names = {alias.asname or alias.name.split(".")[0]
                          for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                                           ast.ImportFrom))
                          for alias in node.names
                          if (getattr(node, "module", None) or alias.name).startswith("gunicorn")
                          and not (getattr(node, "module", None) or alias.name).startswith(
                              "gunicorn_smartspawn")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    root = target
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if isinstance(target, ast.Attribute) and isinstance(root, ast.Name):
                        assert root.id not in gunicorn_names, "%s:%d patches %s" % (
                            path.name, node.lineno, ast.unparse(target))
