"""What a `pre_fork` hook leaves for its worker, carried to a worker forked elsewhere.

gunicorn runs ``pre_fork(server, worker)`` in the master on the very Worker object the
child then serves with, and the child's ``server`` is the master's arbiter as it is at
that fork: whatever the hook set on either is there in ``post_fork``, in
``post_worker_init`` and for the app. A worker forked from a spawner is built in the
spawner, from the spawner's copy of the arbiter, made when the spawner was forked. So the
master sends, with each spawn request (both sides are here):

- what ``pre_fork`` set or replaced on the worker;
- the application's own attributes of the arbiter (those that neither gunicorn nor
  smartspawn assign), as they are now: a hook may fill a dict made in ``on_starting``.

They travel pickled, in a memfd beside the request; the new worker sets them before
``post_fork``. A value that cannot be pickled stays behind, named in a warning once.
"""
import ast
import functools
import inspect
import os
import pickle
import textwrap

MISSING = object()


def worker_changes(worker, before):
    """What `worker`'s attributes are now that differs from `before` (its vars() before
    pre_fork): new attributes, and those given another object."""
    return {name: value for name, value in vars(worker).items()
            if before.get(name, MISSING) is not value}


@functools.cache
def native_attributes(cls):
    """Every attribute name `cls` (an Arbiter class) or its bases define or assign on
    `self`: gunicorn's and smartspawn's own state, never the application's. None when
    a class has no source to read (an install of .pyc files only): then nobody knows."""
    names = set()
    for klass in cls.__mro__[:-1]:  # not object
        names.update(vars(klass))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return None
        names.update(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                     and isinstance(node.value, ast.Name) and node.value.id == "self")
    return frozenset(names)


def app_attributes(server):
    """The application's own attributes of `server`, or None if they cannot be told
    from gunicorn's."""
    native = native_attributes(type(server))
    if native is None:
        return None
    return {name: value for name, value in vars(server).items()
            if name not in native and not name.startswith("__")}


class HookState:
    """The master's side: pickles what pre_fork left, one attribute at a time."""

    def __init__(self, log):
        self.log = log
        self.unpicklable = set()  # ("worker" | "server", name): warned about once
        self.warned_no_source = False

    def capture(self, server, worker, before):
        """The bytes to send with `worker`'s spawn request, or None when empty."""
        state = {"worker": worker_changes(worker, before),
                 "server": self.server_attributes(server)}
        if not (state["worker"] or state["server"]):
            return None
        try:  # once, as a whole: the usual case
            data = pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
        except Exception:  # pickle raises TypeError, PicklingError, anything
            state = {owner: self.picklable(owner, state[owner]) for owner in state}
            data = pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
        self.log.debug("Worker %s takes what hooks set: %s", worker.age, ", ".join(
            "%s.%s" % (owner, name) for owner in state for name in sorted(state[owner])))
        return data

    def server_attributes(self, server):
        attributes = app_attributes(server)
        if attributes is None:
            if not self.warned_no_source:
                self.warned_no_source = True
                self.log.warning("What hooks set on `server` cannot reach workers forked "
                                 "from the preloader or a template: gunicorn's source is "
                                 "not installed, so it cannot be told from gunicorn's own")
            return {}
        return attributes

    def picklable(self, owner, attributes):
        out = {}
        for name, value in attributes.items():
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # pickle raises TypeError, PicklingError, anything
                if (owner, name) not in self.unpicklable:
                    self.unpicklable.add((owner, name))
                    self.log.warning(
                        "%s.%s, set by a hook, cannot reach workers forked from the "
                        "preloader or a template (%s: %s): set it in post_fork instead",
                        owner, name, type(exc).__name__, exc)
                continue
            out[name] = value
        return out


def to_memfd(data):
    """An anonymous in-memory file holding `data`, at offset 0: sent with the request."""
    fd = os.memfd_create("smartspawn-hook-state", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def apply(fd, server, worker):
    """In the new worker, before post_fork: set what the master sent (and close `fd`)."""
    with open(fd, "rb") as state_file:
        state = pickle.load(state_file)
    for name, value in state["server"].items():
        setattr(server, name, value)
    for name, value in state["worker"].items():
        setattr(worker, name, value)
