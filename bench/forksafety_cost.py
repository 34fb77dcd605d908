#!/usr/bin/env python
"""What the fork-safety check costs a preloader's boot and a refork.

On apps/heavy_import.py (~1 s and ~140 MB to import; it imports sqlite3, whose C
connection type makes the object scan look at every object, the slow path), side by side
in one run, alternating (off, warn, off, warn, ...), fresh servers each round:

- the preloader's boot: the master's "preloader (pid: P, gen=1) loaded the app in S"
  (the import, then the check, then the freeze);
- a refork: SIGURG, then "template (pid: P, gen=2) ready in S" (the candidate's
  pre_template_fork, quiescing, the check, the freeze; logged at debug).

Reported: per setting the median seconds, and the medians of the per-round ratios
warn/off and differences warn - off.

    python -m bench.forksafety_cost [--rounds N] [--records N] [--json PATH]
"""
import argparse
import signal
import statistics
import sys

from bench.server import SMARTSPAWN, Server, Servers, run_in_tmpdir, write_json

SETTINGS = ("off", "warn")
LOADED = r"preloader \(pid: \d+, gen=1\) loaded the app in ([\d.]+)s"
TEMPLATE = r"template \(pid: \d+, gen=2\) ready in ([\d.]+)s"


def measure(tmp, setting, round_no, args):
    config = 'fork_safety = "%s"\nfork_worker = True\n' % setting
    server = Server("%s-%d" % (setting, round_no), tmp / ("%s-%d" % (setting, round_no)),
                    "heavy_import:app", args=SMARTSPAWN, config=config, workers=2,
                    env={"HEAVY_IMPORT_RECORDS": str(args.records),
                         "HEAVY_IMPORT_SECONDS": "0"}, log_level="debug")
    with Servers() as servers:
        servers.start(server, timeout=args.timeout)
        loaded = float(server.wait_log(LOADED, args.timeout).group(1))
        server.signal(signal.SIGURG)
        template = float(server.wait_log(TEMPLATE, args.timeout).group(1))
    return loaded, template


def run(args, tmp):
    results = {s: {"boot": [], "template": []} for s in SETTINGS}
    for round_no in range(args.rounds):
        for setting in SETTINGS:
            boot, template = measure(tmp, setting, round_no, args)
            results[setting]["boot"].append(boot)
            results[setting]["template"].append(template)
            print("round %d %-4s: boot %.3f s, template ready %.3f s"
                  % (round_no + 1, setting, boot, template), flush=True)
    report = {"records": args.records, "rounds": args.rounds, "runs": results}
    for phase in ("boot", "template"):
        pairs = list(zip(results["warn"][phase], results["off"][phase], strict=True))
        report[phase] = {s: statistics.median(results[s][phase]) for s in SETTINGS}
        # The template's is a few ms, logged to the ms: its difference says more.
        report[phase]["ratio_warn_off"] = statistics.median(w / o for w, o in pairs if o)
        report[phase]["warn_minus_off"] = statistics.median(w - o for w, o in pairs)
        print("%-8s median: off %.3f s, warn %.3f s; warn/off %.3fx, warn - off %+.0f ms "
              "(medians of rounds)" % (phase, report[phase]["off"], report[phase]["warn"],
                                       report[phase]["ratio_warn_off"],
                                       1000 * report[phase]["warn_minus_off"]))
    write_json(args.json, report)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--records", type=int, default=170000, help="heap records (170000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    return 0 if run_in_tmpdir("forksafety-cost-", run, args) else 2


if __name__ == "__main__":
    sys.exit(main())
