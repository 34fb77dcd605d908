"""The package's layout is the process tree, with no import cycles.

Each subpackage is named for the process its code runs in, and imports only from its own
subpackage and the layers below it: the master over the spawners (preloader, template)
over gunicorn's patches (host) over the workers over fork safety over what every process
shares; the command line sees only what is shared. The package's __init__ is the one
module that may import them all: it is what `-k smartspawn.Worker` loads.
"""
import ast
from pathlib import Path

import gunicorn_smartspawn

PACKAGE = Path(gunicorn_smartspawn.__file__).parent
# Top to bottom; a module may import its own layer's modules and those below.
LAYERS = ["master", "spawner", "host", "worker", "forksafety", "shared"]
BELOW = {layer: set(LAYERS[index:]) for index, layer in enumerate(LAYERS)}
BELOW["cli"] = {"cli", "shared"}


def module_name(path):
    """'master.fleet' for master/fleet.py; 'forksafety' for forksafety/__init__.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules():
    """Every module of the package but its __init__: name -> path."""
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}


def imported_modules(path, known):
    """The package's modules that `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "gunicorn_smartspawn":
                continue
            base = ".".join(parts[1:])
            for alias in node.names:
                inner = (base + "." if base else "") + alias.name
                found.add(inner if inner in known else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "gunicorn_smartspawn" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
    return {name for name in found if name}


def import_graph():
    known = modules()
    return {name: imported_modules(path, known) for name, path in known.items()}


def test_every_module_lives_in_a_subpackage_of_a_layer():
    assert {name.split(".")[0] for name in modules()} == set(BELOW)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]


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


def test_each_process_imports_only_its_own_code_and_the_layers_below():
    for module, imported in import_graph().items():
        allowed = BELOW[module.split(".")[0]]
        above = {name for name in imported if name.split(".")[0] not in allowed}
        assert not above, "%s imports %s, above it" % (module, sorted(above))


def test_every_gunicorn_patch_is_in_patches():
    # An assignment to an attribute of a gunicorn object, anywhere else, is a patch.
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) == "host.patches":
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
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) == "host.patches":
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
    parts = [name for name in modules() if name.startswith("master.")
             and name != "master.arbiter"] + ["shared.hookstate", "shared.state"]
    assert "master.fleet" in parts
    held = {"master", "arbiter", "server"}
    for part in parts:
        tree = ast.parse(modules()[part].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                names = {arg.arg for arg in node.args.args}
                assert not names & held, "%s.py: __init__ takes %s" % (part, names & held)
        for line, target in writes(tree):
            assert target.attr not in held, "%s.py:%d keeps %s" % (
                part, line, ast.unparse(target))
