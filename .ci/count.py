#!/usr/bin/env python3
"""Counts test cases from automake's logs: Check's "Checks: N, Failures: F,
Errors: E" lines and unittest's "Ran N tests" / "FAILED (...)" lines. A test
program that failed without either is counted as one failure.

  count.py NAME            print "NAME passed failed" for the logs in .
  count.py --total FILE    sum such lines; print "N passed, N failed"
"""
import glob, os, re, sys


def count_file(trs):
    """(passed, failed) of one test program."""
    log = trs[:-4] + ".log"
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    result = re.search(r":test-result: (\w+)", open(trs).read())
    result = result.group(1) if result else "ERROR"
    passed = failed = 0
    m = re.search(r"Checks: (\d+), Failures: (\d+), Errors: (\d+)", text)
    ran = re.search(r"^Ran (\d+) tests?", text, re.M)
    if m:
        n, f, e = map(int, m.groups())
        passed, failed = n - f - e, f + e
    elif ran:
        bad = sum(int(x) for x in re.findall(
            r"(?:failures|errors|unexpected successes)=(\d+)", text))
        skipped = sum(int(x) for x in re.findall(r"skipped=(\d+)", text))
        passed, failed = int(ran.group(1)) - bad - skipped, bad
    elif result == "PASS":
        passed = 1
    if result in ("FAIL", "ERROR") and failed == 0:
        failed = 1      # it crashed or hung past what its counts say
    return passed, failed


def count_here():
    passed = failed = 0
    for trs in sorted(glob.glob("tests/**/*.trs", recursive=True)):
        p, f = count_file(trs)
        passed += p
        failed += f
    return passed, failed


if sys.argv[1] == "--total":
    p = f = 0
    for line in open(sys.argv[2]):
        _, a, b = line.split()
        p += int(a)
        f += int(b)
    extra = sys.argv[2] + ".extra"
    if os.path.exists(extra):
        f += sum(1 for _ in open(extra))
    print(f"{p} passed, {f} failed")
    sys.exit(1 if f else 0)
p, f = count_here()
print(f"{sys.argv[1]} {p} {f}")
