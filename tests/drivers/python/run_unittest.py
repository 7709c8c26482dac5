r"""Runs a driver's own unittest suite and records every test's outcome.

Usage:
  run_unittest.py --root DIR (--entry MODULE:FUNCTION | --discover PACKAGE)
                  [--only PREFIX ...] --results FILE

DIR holds the suite's package (an sdist's tests/). --entry calls the suite's
own builder (psycopg2's tests:test_suite); --discover loads PACKAGE/test_*.py
as asyncpg's own tests.suite() does. --only keeps the tests whose id starts
with one of the given prefixes.

FILE gets one tab-separated record per line, written and flushed as the run
goes, so that a run killed on its time limit still says what finished and
which test was running:

  start  ID  UNIX_TIME
  end    ID  OUTCOME  SECONDS  DETAIL

OUTCOME is one of pass, fail, error, skip, xfail, xpass. DETAIL (traceback or
skip reason) has backslash, tab and newline escaped as \\, \t and \n. Errors
raised outside a test (setUpClass and the like) are "end" records whose ID
names the fixture.
"""

import argparse
import importlib
import os
import sys
import time
import traceback
import unittest

# How much of a traceback a record keeps: enough to see the assertion.
DETAIL_CHARS = 2000


def escape(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class RecordingResult(unittest.TextTestResult):
    """A text result that also writes each outcome to the results file."""

    def __init__(self, stream, descriptions, verbosity, *, sink):
        super().__init__(stream, descriptions, verbosity)
        self.sink = sink
        self.started = {}

    def _write(self, *fields):
        self.sink.write("\t".join(escape(str(f)) for f in fields) + "\n")
        self.sink.flush()

    def _end(self, test, outcome, detail=""):
        began = self.started.pop(test.id(), None)
        seconds = round(time.monotonic() - began, 3) if began else ""
        self._write("end", test.id(), outcome, seconds, detail[-DETAIL_CHARS:])

    def startTest(self, test):
        self.started[test.id()] = time.monotonic()
        self._write("start", test.id(), round(time.time(), 3))
        super().startTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._end(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._end(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self._end(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._end(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._end(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._end(test, "xpass")

    def addSubTest(self, test, subtest, err):
        # A failing subtest fails its test; record it under the test's id so
        # that the sets compared stay test-level.
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            detail = str(subtest) + "\n" + self._exc_info_to_string(err, test)
            self._write("end", test.id(), kind, "", detail[-DETAIL_CHARS:])


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def select(suite, prefixes):
    """Keeps the tests whose id starts with a prefix; suites are rebuilt per
    class so that setUpClass/tearDownClass still run once per class."""
    if not prefixes:
        return suite
    kept = unittest.TestSuite()
    for test in flatten(suite):
        if any(test.id().startswith(p) for p in prefixes):
            kept.addTest(test)
    return kept


def load(args):
    sys.path.insert(0, os.path.abspath(args.root))
    if args.entry:
        module, function = args.entry.split(":")
        return getattr(importlib.import_module(module), function)()
    package_dir = os.path.join(args.root, args.discover)
    return unittest.TestLoader().discover(package_dir, pattern="test_*.py", top_level_dir=args.root)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--entry")
    group.add_argument("--discover")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--results", required=True)
    args = parser.parse_args()

    with open(args.results, "w", buffering=1) as sink:
        try:
            suite = select(load(args), args.only)
        except BaseException:
            detail = escape(traceback.format_exc()[-DETAIL_CHARS:])
            sink.write(f"end\t<load>\terror\t\t{detail}\n")
            raise
        runner = unittest.TextTestRunner(
            stream=sys.stderr,
            verbosity=2,
            resultclass=lambda *a, **kw: RecordingResult(*a, **kw, sink=sink),
        )
        result = runner.run(suite)
    # The harness reads the results file; the exit code only says "ran".
    sys.exit(0 if result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
