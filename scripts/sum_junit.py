"""Add up pytest's JUnit XML reports: one closing line for a CI that ran several suites.

    python scripts/sum_junit.py .ci/results/*.xml   ->   "N passed, N failed, N skipped"
"""
import sys
import xml.etree.ElementTree as ET


def totals(paths):
    tests = failed = skipped = 0
    for path in paths:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


if __name__ == "__main__":
    passed, failed, skipped = totals(sys.argv[1:])
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)
