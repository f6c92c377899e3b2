"""The test runner shipped into the sandbox: stdlib only, run as ``python -I -S`` (no pytest there).

Usage: ``python -I -S sandbox_runner.py REPORT TEST_FILE...`` with a nonce on the first line of stdin.
Imports each test module, calls each ``test_*`` function in definition order, and writes
``{"nonce", "tampered", "tests": {"FILE::NAME": {"outcome", "message"}}, "errors": {FILE: message}}`` to
REPORT, then exits 0 at once (atexit hooks of the code under test do not run).

It only reports; the grader outside decides. The nonce is read before any code under test runs, so a
report written by that code (which then exits) lacks it, and a REPORT file that exists before the runner
writes its own marks the run as tampered. Everything the runner needs is bound before the code under
test is imported, so that code replacing ``json.dumps`` or ``builtins.open`` changes nothing here.
"""

import json
import os
import sys
import traceback

_dumps, _exists, _exit, _open, _extract_tb = json.dumps, os.path.exists, os._exit, open, traceback.extract_tb
_Base, _type = BaseException, type


def _describe(err, test_file):
    """``AssertionError: assert shop.total(2, 3) == 6``: the exception and the test line it stopped at."""
    try:
        frames = [f for f in _extract_tb(err.__traceback__) if f.filename.endswith(test_file)]
        where = frames[-1].line if frames else ""
        text = _type(err).__name__ + (": " + where if where else "")
        return text[:160]
    except _Base:  # an exception whose attributes misbehave still gets a description
        return "error"


def main():
    nonce = sys.stdin.readline().strip()
    report, test_files = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    tests, errors = {}, {}
    for test_file in test_files:
        try:
            module = __import__(test_file[:-3])
        except _Base as err:  # SystemExit and KeyboardInterrupt too: the code under test is not trusted
            errors[test_file] = _describe(err, test_file)
            continue
        for name, function in list(vars(module).items()):
            if not name.startswith("test_") or not callable(function):
                continue
            key = test_file + "::" + name
            try:
                function()
                tests[key] = {"outcome": "passed", "message": ""}
            except _Base as err:
                tests[key] = {"outcome": "failed", "message": _describe(err, test_file)}
    tampered = _exists(report)
    with _open(report, "w") as out:
        out.write(_dumps({"nonce": nonce, "tampered": tampered, "tests": tests, "errors": errors}))
    _exit(0)


if __name__ == "__main__":
    main()
