"""What the master's policies (lifecycle.py, refork.py) decide, for the arbiter to do.

A policy reads the table of children (fleet.py), the configuration, its clock and a
Situation, and yields actions: it changes no record's role or state, signals no process
and runs no hook (it may note on a record what it measured: memory samples). The arbiter
carries out each action as it is yielded, so the policy's next step sees its effect.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Situation:
    """What the policies need of the master this turn."""
    workers: int                # the `workers` target, as configured (TTIN/TTOU included)
    generation: int
    smart: bool                 # spawning from a preloader (else from the master)
    halting: bool = False       # the master is stopping
    reloading: bool = False     # in gunicorn's own HUP (direct spawning)
    preloader_starting: bool = False  # no preloader is ready: one is (re)starting


@dataclasses.dataclass(frozen=True)
class Replace:
    """Make the worker outgoing: it serves until its replacement does."""
    record: object
    why: str
    stat: str | None = None     # the lifecycle stat (and statsd counter) it adds to


@dataclasses.dataclass(frozen=True)
class Stop:
    """Signal a worker to stop."""
    record: object
    sig: int


@dataclasses.dataclass(frozen=True)
class Retire:
    """Stop using a spawner (the preloader, the template) and let it exit."""
    spawner: object


@dataclasses.dataclass(frozen=True)
class StartRefork:
    """Start a refork now (refork_on_memory)."""
    reason: str


@dataclasses.dataclass(frozen=True)
class AbandonTemplate:
    """The template's workers keep failing to boot: spawn from the preloader again."""
    template: object
    why: str


@dataclasses.dataclass(frozen=True)
class BeginRefork:
    """The worker is the refork's candidate: run on_refork, read its channel."""
    candidate: object


@dataclasses.dataclass(frozen=True)
class TellCandidate:
    """A stand-in serves: tell the candidate to become the template (BecomeTemplate+URG)."""
    candidate: object
    generation: int


@dataclasses.dataclass(frozen=True)
class GiveBack:
    """A refork ended before its candidate was told: it is a worker again."""
    candidate: object


@dataclasses.dataclass(frozen=True)
class NewTemplate:
    """The candidate is ready: it is the template of `generation` now."""
    template: object
    generation: int
