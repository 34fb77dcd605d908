"""`python -m bench.immortal_pythons [--rounds R] --json PATH`: `python -m bench`'s
`immortal` step, bench/immortal.py's full read on CPython 3.13 and 3.14.

`gc_freeze = "immortal"` needs CPython 3.12 or later, and the suite's own interpreter may
be 3.11: each version runs `bench/immortal.py --measures read` under the newest
.venvs/<version> of its minor that is present (3.14.7 before 3.14.4; free-threaded
builds, which cannot make a heap immortal, are left out), one after the other. None is
built here: where a minor has no virtualenv the step says so and goes on
(`scripts/venv-for 3.13.5 --group bench` makes one). PYTHONPATH names this tree, so that
a virtualenv installed from another checkout still measures this code.

Targets, per version: total PSS after every worker read the whole heap <= 1.10x one
warmed process; the pass <= 0.3 s per million objects walked (bench/immortal.py's).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINORS = ("3.13", "3.14")


def newest_venv(venvs, minor):
    """The python of the newest venvs/<minor>.N (not free-threaded), or None."""
    found = []
    for path in venvs.glob("%s.*" % minor):
        patch = re.fullmatch(r"%s\.(\d+)" % re.escape(minor), path.name)
        if patch and (path / "bin" / "python").exists():
            found.append((int(patch.group(1)), path / "bin" / "python"))
    return max(found)[1] if found else None


def run(python, rounds, tmp):
    """bench/immortal.py under `python`; -> (its --json result or None, exit status)."""
    out = tmp / ("%s.json" % python.parent.parent.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = subprocess.run([str(python), "bench/immortal.py", "--measures", "read",
                           "--rounds", str(rounds), "--json", str(out)], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, check=False).returncode
    return (json.loads(out.read_text()) if code == 0 and out.exists() else None), code


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.immortal_pythons",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per version (2)")
    parser.add_argument("--venvs", default=str(ROOT / ".venvs"),
                        help="where the virtualenvs are (.venvs of this tree)")
    parser.add_argument("--json", required=True, metavar="PATH")
    args = parser.parse_args(argv)
    result = {"benchmark": "immortal_pythons", "rounds": args.rounds, "pythons": {},
              "skipped": {}, "targets": {}}
    failed = []
    with tempfile.TemporaryDirectory(prefix="ssbench-immortal-pythons-") as tmp:
        for minor in MINORS:
            python = newest_venv(Path(args.venvs), minor)
            if python is None:
                result["skipped"][minor] = (
                    "no virtualenv %s/%s.N (scripts/venv-for %s.N --group bench makes one)"
                    % (args.venvs, minor, minor))
                print("CPython %s: skipped: %s" % (minor, result["skipped"][minor]), flush=True)
                continue
            print("== bench/immortal.py --measures read on %s" % python, flush=True)
            found, code = run(python, args.rounds, Path(tmp))
            if found is None:
                failed.append(minor)
                result["skipped"][minor] = "bench/immortal.py failed (exit status %s)" % code
                continue
            version = found["python"]
            result["pythons"][version] = found
            for label, target in found["targets"].items():
                result["targets"]["CPython %s: %s" % (version, label)] = target
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
