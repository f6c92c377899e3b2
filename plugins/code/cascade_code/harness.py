"""The test harness that runs INSIDE the sandbox, next to the model's ``solution.py`` (stdlib only).

It only *produces* outputs; it never sees the expected ones (the trusted reward compares them
outside). It reads ``cases.json`` (``{"form", "entry", "inputs"}``) and writes ``report.json``:

* ``function``: runs ``solution.py`` as a module (``__name__ != "__main__"``), calls ``entry(*args)``
  for each input, and reports ``{"value": ...}`` (JSON) or ``{"error": "..."}`` per case;
  ``{"load_error": "..."}`` if the program does not load or has no such function.
* ``stdio``: for each input, forks a fresh child whose file descriptors 0 and 1 are the case's input
  file and a fresh output file, runs ``solution.py`` as ``__main__`` there, and reports the child's
  ``stdout`` (up to a cap), its ``exit`` code, or the ``signal`` that killed it. A real process per
  case: ``open(0).read()``, ``sys.exit()`` and module state behave as in a standalone run.

The report is written last, so a program that ends the process early (``os._exit``) leaves none.
"""

import json
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it on every call: once here, not in each stdio test's fork
import runpy
import sys
import traceback

MAX_VALUE_CHARS = 10_000
MAX_STDOUT_BYTES = 65_536


def _describe(error):
    return f"{type(error).__name__}: {error}"[:500]


def run_function(entry, inputs):
    try:
        namespace = runpy.run_path("solution.py", run_name="solution")
    except BaseException as error:  # noqa: BLE001 - SyntaxError, SystemExit, anything at load time
        return {"load_error": _describe(error)}
    function = namespace.get(entry)
    if not callable(function):
        return {"load_error": f"no function named {entry!r}"}
    cases = []
    for args in inputs:
        try:
            value = function(*args)
            text = json.dumps(value)
            if len(text) > MAX_VALUE_CHARS:
                raise ValueError(f"returned a value of {len(text)} characters")
            cases.append({"value": json.loads(text)})
        except BaseException as error:  # noqa: BLE001 - the case failed, the others still run
            cases.append({"error": _describe(error)})
    return {"cases": cases}


def _child(stdin_path, stdout_path):
    """Runs in the forked child: never returns."""
    code = 1
    try:
        os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
        os.dup2(os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        try:
            runpy.run_path("solution.py", run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the program's exception: a traceback and exit 1, like python
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stdout loses its output, like python
            code = code or 1
        os._exit(code & 0xFF)


def run_stdio(inputs):
    cases = []
    for index, text in enumerate(inputs):
        stdin_path, stdout_path = f"case{index}.in", f"case{index}.out"
        with open(stdin_path, "w") as file:
            file.write(text)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(stdin_path, stdout_path)
        _, status = os.waitpid(pid, 0)
        try:
            with open(stdout_path, "rb") as file:
                stdout = file.read(MAX_STDOUT_BYTES).decode("utf-8", errors="replace")
        except OSError:
            stdout = ""
        for path in (stdin_path, stdout_path):  # free the job's small disk for the next test
            try:
                os.remove(path)
            except OSError:
                pass
        case = {"stdout": stdout}
        if os.WIFSIGNALED(status):
            case["signal"] = os.WTERMSIG(status)
        else:
            case["exit"] = os.WEXITSTATUS(status)
        cases.append(case)
    return {"cases": cases}


def main():
    with open("cases.json") as file:
        spec = json.load(file)
    if spec["form"] == "function":
        report = run_function(spec["entry"], spec["inputs"])
    else:
        report = run_stdio(spec["inputs"])
    with open("report.json", "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main()
