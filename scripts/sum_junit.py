"""Add up pytest's JUnit XML reports: one closing line for a CI that ran several suites.

    python scripts/sum_junit.py .ci/results/*.xml   ->   "N passed, N failed, N skipped"

Before it, a line for each test that failed once and was run again (pytest-rerunfailures
records both runs as test cases of the same name).
"""
import collections
import os
import sys
import xml.etree.ElementTree as ET


def totals(paths):
    tests = failed = skipped = 0
    reruns = []
    for path in paths:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
            runs = collections.Counter((case.get("classname"), case.get("name"))
                                       for case in suite.iter("testcase"))
            reruns += ["%s: %s::%s" % (os.path.basename(path), classname, name)
                       for (classname, name), count in runs.items() if count > 1]
    return tests - failed - skipped, failed, skipped, reruns


if __name__ == "__main__":
    passed, failed, skipped, reruns = totals(sys.argv[1:])
    for rerun in reruns:
        print("failed once, run again:", rerun)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)
