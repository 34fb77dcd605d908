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
    upper = {"arbiter", "patches", "fleet", "actions", "backoff", "refork", "lifecycle",
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


def gunicorn_private_names():
    """The private attribute names gunicorn's arbiter and workers assign on themselves."""
    import gunicorn.arbiter
    import gunicorn.workers.base
    names = set()
    for module in (gunicorn.arbiter, gunicorn.workers.base):
        tree = ast.parse(Path(module.__file__).read_text())
        names.update(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                     and node.attr.startswith("_") and not node.attr.startswith("__"))
    return names


def writes(tree):
    """(line, target) of every assignment, augmented or annotated, to an attribute."""
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and isinstance(part.ctx, ast.Store):
                    yield node.lineno, part


def test_only_patches_writes_gunicorn_private_state_or_live_settings():
    private = gunicorn_private_names()
    assert "_num_workers" in private  # the test sees what it looks for
    for path in PACKAGE.glob("*.py"):
        if path.stem == "patches":
            continue
        tree = ast.parse(path.read_text())
        for line, target in writes(tree):
            assert target.attr not in private, "%s:%d writes gunicorn's %s" % (
                path.name, line, ast.unparse(target))
        for node in ast.walk(tree):
            # cfg.settings[name].set(value): a change of gunicorn's live configuration.
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "set" and isinstance(node.func.value, ast.Subscript)
                    and ast.unparse(node.func.value.value).endswith("settings")):
                raise AssertionError("%s:%d sets a live setting: %s" % (
                    path.name, node.lineno, ast.unparse(node)))


def test_no_part_of_the_master_holds_the_arbiter():
    # The policies and the table get what they read (the table, the config, a clock, a
    # Situation) and yield actions: none keeps the arbiter (SmartArbiter.carry_out).
    parts = ("fleet", "actions", "backoff", "refork", "lifecycle", "hookstate", "state")
    held = {"master", "arbiter", "server"}
    for part in parts:
        tree = ast.parse((PACKAGE / (part + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                names = {arg.arg for arg in node.args.args}
                assert not names & held, "%s.py: __init__ takes %s" % (part, names & held)
        for line, target in writes(tree):
            assert target.attr not in held, "%s.py:%d keeps %s" % (
                part, line, ast.unparse(target))
