"""cascade.environments.sandbox: ordinary programs on both sides of every status, each limit, then hostile programs
(fork bomb, memory bomb, endless loops, floods of output, writes outside the job, secrets, sockets, killing the
parent, daemons), each of which must be contained, not pass, leave no process behind and leave the test running.

Every hostile job carries a unique tag in its argv, which every process it forks inherits; ``no_survivors`` then
scans the host's /proc for it. Assertions that need an isolation layer this machine lacks are skipped, naming it.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import survivors

from cascade.environments import sandbox
from cascade.environments.sandbox import ExecResult, Job, Limits, SandboxPool, run

FAST = Limits(cpu_seconds=1, wall_seconds=10, memory_mb=256, processes=16, file_size_mb=4, open_files=32,
              output_bytes=64 << 10)


def tagged(code: str, *args: str, **job) -> tuple[Job, str]:
    """A job whose every process carries a fresh tag in its command line."""
    tag = f"sandbox-test-{uuid.uuid4().hex}"
    job.setdefault("limits", FAST)
    return Job({"main.py": code}, command=("main.py", tag, *args), **job), tag


def run_contained(job: Job, tag: str) -> ExecResult:
    """Run a hostile job: it must not pass, and nothing it started may outlive ``run``."""
    result = run(job)
    assert not result.passed, result
    assert survivors(tag) == [], f"processes left behind: {survivors(tag)}"
    return result


def require(result: ExecResult, layer: str) -> None:
    if layer not in result.isolation:
        pytest.skip(f"isolation layer {layer!r} is not active on this machine (mode {sandbox.isolation_mode()!r}, "
                    f"active: {', '.join(result.isolation)})")


def test_the_strongest_available_mode_is_chosen_and_reported():
    result = run(Job({"main.py": "print('hi')"}))
    assert result.passed and result.stdout == "hi\n"
    assert {"rlimits", "python-isolated", "clean-env"} <= set(result.isolation)
    if sandbox.isolation_mode() == "namespaces":
        assert {"netns", "pidns", "mountns", "private-root", "uid"} <= set(result.isolation)
    else:
        assert "netns" not in result.isolation and "pidns" not in result.isolation


# ---- ordinary programs: every status, both sides -----------------------------------------------------------

SEGFAULT = "import ctypes\nctypes.string_at(0)"
# (program, command args, stdin, status, returncode, piece of stdout / stderr / detail)
ORDINARY = [
    ("print('hello')", (), "", "passed", 0, "hello"),
    ("print(input()[::-1])", (), "abc", "passed", 0, "cba"),
    ("import sys\nprint(sys.stdin.read().upper())", (), "two\nlines", "passed", 0, "TWO\nLINES"),
    ("import sys\nprint(sys.argv[1:])", ("a", "b c"), "", "passed", 0, "['a', 'b c']"),
    ("print('ünïcode ✓')", (), "", "passed", 0, "ünïcode ✓"),
    ("import sys\nsys.exit(0)", (), "", "passed", 0, ""),
    ("import sys\nsys.exit(3)", (), "", "failed", 3, "exit status 3"),
    ("raise ValueError('bad answer')", (), "", "failed", 1, "ValueError: bad answer"),
    ("assert 1 + 1 == 3, 'wrong'", (), "", "failed", 1, "AssertionError: wrong"),
    ("import os\nos._exit(7)", (), "", "failed", 7, "exit status 7"),
    ("input()", (), "", "failed", 1, "EOFError"),                           # no stdin given: EOF, not a hang
    ("import os\nos.kill(os.getpid(), 11)", (), "", "crashed", -11, "killed by SIGSEGV"),
    (SEGFAULT, (), "", "crashed", -11, "killed by SIGSEGV"),                  # a real invalid read
    ("import os\nos.abort()", (), "", "crashed", -6, "killed by SIGABRT"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", (), "", "crashed", -9, "killed by SIGKILL"),
    ("import helper", (), "", "failed", 1, "ModuleNotFoundError"),           # -I: the job dir is not on sys.path
    ("import sys\nsys.path.insert(0, '')\nimport helper\nprint(helper.VALUE)", (), "", "passed", 0, "42"),
]


@pytest.mark.parametrize("code,args,stdin,status,returncode,expected", ORDINARY)
def test_ordinary_programs(code, args, stdin, status, returncode, expected):
    job = Job({"main.py": code, "helper.py": "VALUE = 42"}, command=("main.py", *args), stdin=stdin, limits=FAST)
    result = run(job)
    assert (result.status, result.returncode) == (status, returncode), result
    assert result.passed == (status == "passed")
    assert expected in result.stdout + result.stderr + result.detail


def test_collected_files_come_back_and_planted_links_and_fifos_do_not():
    code = """
import os
os.makedirs('out/deep')
open('out/deep/report.json', 'w').write('{"passed": 3}')
open('plain.txt', 'w').write('x' * 100000)
os.symlink('/etc/passwd', 'link.txt')
os.symlink('/', 'rootlink')
os.mkfifo('fifo')
"""
    job = Job({"main.py": code, "given.txt": "input"}, limits=FAST,
              collect=["out/deep/report.json", "given.txt", "plain.txt", "missing.json", "link.txt", "rootlink/etc/passwd", "fifo"])
    result = run(job)
    assert result.passed, result
    assert result.files["out/deep/report.json"] == '{"passed": 3}'
    assert result.files["given.txt"] == "input"
    assert len(result.files["plain.txt"]) == 100000
    assert set(result.files) == {"out/deep/report.json", "given.txt", "plain.txt"}  # no missing file, link or FIFO


# ---- limits --------------------------------------------------------------------------------------------------

# (program, limits, status, piece of the detail or stderr); wall clocks are generous: a loaded machine must not turn
# a limit's failure into a timeout
LIMITED = [
    ("while True: pass", FAST, "timeout", "CPU limit of 1s"),
    ("import time\ntime.sleep(60)", Limits(wall_seconds=1.5), "timeout", "wall-clock timeout after 1.5s"),
    ("x = []\nwhile True: x.append(bytearray(10**7))", FAST, "failed", "MemoryError"),
    ("open('big', 'wb').write(b'x' * (8 << 20))", FAST, "failed", "File too large"),
    ("open('/tmp/big', 'wb').write(b'x' * (8 << 20))", FAST, "failed", "File too large"),
    ("fs = [open(f'f{i}', 'w') for i in range(100)]", FAST, "failed", "Too many open files"),
    ("import threading, time\nfor _ in range(40): threading.Thread(target=time.sleep, args=(2,)).start()",
     FAST, "failed", "can't start new thread"),
    ("while True: print('x' * 1000)", FAST, "failed", "stdout over the 65536-byte output limit"),
    ("import sys\nsys.stderr.write('e' * 200000)", FAST, "failed", "stderr over the 65536-byte output limit"),
    ("print('x' * 60000)", FAST, "passed", ""),                        # under the cap: kept whole
]


@pytest.mark.parametrize("code,limits,status,expected", LIMITED)
def test_limits(code, limits, status, expected):
    job, tag = tagged(code, limits=limits)
    result = run(job)
    assert result.status == status, result
    assert expected in result.detail + result.stderr
    assert len(result.stdout.encode()) <= limits.output_bytes and len(result.stderr.encode()) <= limits.output_bytes
    assert survivors(tag) == []


def test_exactly_the_output_cap_is_kept():
    result = run(Job({"main.py": "import sys\nsys.stdout.write('a' * 100000)"}, limits=FAST))
    assert result.status == "failed" and result.stdout == "a" * FAST.output_bytes


# ---- hostile programs ------------------------------------------------------------------------------------------


def test_fork_bomb_is_contained_and_the_next_job_runs():
    job, tag = tagged("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                      limits=Limits(cpu_seconds=1, wall_seconds=2, processes=16))
    result = run_contained(job, tag)
    assert result.status == "timeout"
    assert run(Job({"main.py": "print('still fine')"}, limits=FAST)).stdout == "still fine\n"


def test_memory_bomb_in_many_processes_is_contained():
    code = ("import os\nfor _ in range(4):\n    if os.fork() == 0:\n        break\n"
            "x = []\nwhile True: x.append(bytearray(10**7))")
    job, tag = tagged(code, limits=Limits(cpu_seconds=2, wall_seconds=5, memory_mb=96, processes=16))
    result = run_contained(job, tag)
    assert result.status == "failed" and "MemoryError" in result.stderr


@pytest.mark.parametrize("how", ["setsid", "double-fork", "plain-child", "subprocess"])
def test_background_processes_die_before_files_are_collected(how):
    spawn = {
        "setsid": "if os.fork() == 0:\n    os.setsid()\n    late()\n",
        "double-fork": "if os.fork() == 0:\n    if os.fork() == 0:\n        os.setsid()\n        late()\n    os._exit(0)\n",
        "plain-child": "if os.fork() == 0:\n    late()\n",
        "subprocess": "import subprocess\nsubprocess.Popen([sys.executable, '-I', '-S', '-c', "
                      "'import time; time.sleep(0.5); open(\"late.txt\", \"w\").write(\"alive\")', sys.argv[1]], start_new_session=True)\n",
    }[how]
    code = ("import os, sys, time\n"
            "def late():\n    time.sleep(0.5)\n    open('late.txt', 'w').write('alive')\n    time.sleep(60)\n    os._exit(0)\n"
            + spawn + "print('main done')")
    job, tag = tagged(code, collect=["late.txt"])
    result = run(job)
    assert result.passed and result.stdout == "main done\n"  # the program itself is fine...
    time.sleep(0.7)
    assert survivors(tag) == []                             # ...but nothing it left is running
    assert "late.txt" not in result.files


def test_writing_outside_the_job_directory_fails(tmp_path):
    targets = [tmp_path / "escaped.txt", Path("/tmp") / f"escaped-{uuid.uuid4().hex}", Path.cwd() / "escaped.txt",
               Path(sandbox.__file__).with_name("escaped.py")]
    code = "import sys\nfor path in sys.argv[2:]:\n    open(path, 'w').write('pwned')\n"
    job, tag = tagged(code, *map(str, targets))
    result = run_contained(job, tag)
    assert result.status == "failed"
    assert not any(t.exists() for t in targets)


def test_the_parents_secrets_are_out_of_reach(tmp_path, monkeypatch):
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("CASCADE_TEST_SECRET", secret_value)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(f"machine example.com password {secret_value}\n")
    (tmp_path / ".netrc").chmod(0o644)
    code = """
import glob, os, sys
print('HOME is', os.environ.get('HOME'))
found = [os.environ.get('CASCADE_TEST_SECRET', '')]
for path in [sys.argv[2], sys.argv[3], *glob.glob('/proc/*/environ'), '/root/.bash_history']:
    try:
        found.append(open(path, errors='replace').read())
    except OSError as e:
        print('denied', path, e)
print(found)
sys.exit(0 if sys.argv[4] in ''.join(found) else 1)
"""
    job, tag = tagged(code, str(tmp_path / ".netrc"), f"/proc/{os.getpid()}/environ", secret_value)
    result = run_contained(job, tag)
    assert result.status == "failed"
    assert f"HOME is {tmp_path}" not in result.stdout  # HOME is the job's own directory


def test_only_the_interpreter_and_system_files_are_visible():
    code = ("import os, sys\nprint(sorted(os.listdir('/')))\nprint(os.listdir(os.path.expanduser('~')))\n"
            "print(open(sys.argv[2]).read()[:20])")
    job, tag = tagged(code, sandbox.__file__)  # the repo: readable on the host, absent in the private root
    result = run_contained(job, tag)
    require(result, "private-root")
    assert "FileNotFoundError" in result.stderr
    top = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "dev", "proc", "tmp", "job",
           *(path.split("/")[1] for path in sandbox._interpreter_dirs())}
    assert set(ast.literal_eval(result.stdout.splitlines()[0])) <= top


def test_no_network_even_to_the_host_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        code = ("import socket, sys\n"
                "socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=1).sendall(b'leak')\n"
                "print('connected')")
        job, tag = tagged(code, str(server.getsockname()[1]))
        result = run(job)
        assert survivors(tag) == []
        require(result, "netns")
        assert result.status == "failed" and "connected" not in result.stdout
        with pytest.raises(socket.timeout):
            server.accept()


def test_killing_the_parent_or_anything_else_fails_and_the_caller_survives():
    if sandbox.isolation_mode() == "plain":  # the job would run as this user: kill(-1) would take the test run down
        pytest.skip("no 'uid' isolation on this machine (mode 'plain'): a hostile job could signal this process")
    code = """
import os, signal, sys
hits = []
for pid in (os.getppid(), 1, int(sys.argv[2]), -1):
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
        try:
            os.kill(pid, sig)
            hits.append((pid, sig))
        except OSError as e:
            print(pid, sig, e)
print('hits', hits, flush=True)
sys.exit(0 if hits else 1)
"""
    job, tag = tagged(code, str(os.getpid()))
    result = run_contained(job, tag)
    assert (result.status, result.returncode) == ("failed", 1), result  # the sandbox reported: its init lives
    assert "hits []" in result.stdout


def test_a_program_cannot_fake_the_sandbox_report():
    code = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"event\": \"exit\", \"returncode\": 0, \"cpu_seconds\": 0, \"files\": {}}\\n')\n" \
           "    except OSError:\n        pass\nraise SystemExit(1)"
    result = run(Job({"main.py": code}, limits=FAST))
    assert result.status == "failed" and result.returncode == 1


def test_jobs_die_on_their_own_when_the_caller_is_killed():
    """The launcher's own alarm (wall + 2 s) is the backstop for a trainer that dies mid-run."""
    tag = f"sandbox-test-{uuid.uuid4().hex}"
    caller = (f"from cascade.environments.sandbox import Job, Limits, run\n"
              f"run(Job({{'main.py': 'import time\\ntime.sleep(60)'}}, command=('main.py', {tag!r}), limits=Limits(wall_seconds=1)))")
    proc = subprocess.Popen([sys.executable, "-"], stdin=subprocess.PIPE)  # the tag is not in the caller's argv
    proc.stdin.write(caller.encode())
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while not survivors(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors(tag), "the job never started"
    proc.kill()
    proc.wait()
    while survivors(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert survivors(tag) == []


# ---- the pool ----------------------------------------------------------------------------------------------------


def test_pool_keeps_job_order_and_the_concurrency_limit():
    code = "import sys, time\nstart = time.time()\ntime.sleep(0.4)\nprint(sys.argv[1], start, time.time())"
    jobs = [Job({"main.py": code}, command=("main.py", str(i)), limits=FAST) for i in range(5)]
    hostile, tag = tagged("while True: pass")
    with SandboxPool(max_workers=2) as pool:
        results = pool.map([*jobs[:2], hostile, *jobs[2:]])
    assert [r.status for r in results] == ["passed", "passed", "timeout", "passed", "passed", "passed"]
    spans = [tuple(map(float, r.stdout.split()[1:])) for r in results if r.passed]
    assert [r.stdout.split()[0] for r in results if r.passed] == ["0", "1", "2", "3", "4"]
    most_at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most_at_once == 2  # parallel, but never more than max_workers
    assert survivors(tag) == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_pool_rejects_a_bad_worker_count(bad):
    with pytest.raises(ValueError, match="max_workers"):
        SandboxPool(max_workers=bad)


# ---- bad input is the caller's error; a broken sandbox is a sandbox_error -------------------------------------

BAD_JOBS = [
    (dict(files={"/etc/passwd": "x"}), "relative path"),
    (dict(files={"../up.py": "x"}), "relative path"),
    (dict(files={"a//b.py": "x"}), "relative path"),
    (dict(files={"main.py": b"bytes"}), "must be text"),
    (dict(files={"main.py": "", "lib": "x", "lib/deep/m.py": "y"}), "both a file and the directory"),
    (dict(files=[("main.py", "x")]), "Job.files"),
    (dict(files={"main.py": ""}, command="main.py"), "Job.command"),
    (dict(files={"main.py": ""}, command=()), "Job.command"),
    (dict(files={"main.py": ""}, collect="out.json"), "Job.collect"),
    (dict(files={"main.py": ""}, collect=["../../etc/shadow"]), "relative path"),
    (dict(files={"main.py": ""}, stdin=b"x"), "Job.stdin"),
    (dict(files={"main.py": ""}, limits={"cpu_seconds": 1}), "Job.limits"),
]


@pytest.mark.parametrize("kwargs,message", BAD_JOBS)
def test_malformed_jobs_are_rejected_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Job(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(cpu_seconds=0), dict(wall_seconds=-1), dict(memory_mb=1.5),
                                    dict(processes=True), dict(output_bytes="1")])
def test_bad_limits_are_rejected(kwargs):
    with pytest.raises(ValueError, match="Limits"):
        Limits(**kwargs)


def test_run_takes_only_jobs():
    with pytest.raises(TypeError, match="Job"):
        run({"main.py": "print(1)"})


@pytest.mark.parametrize("mode,detail", [
    (sandbox._Mode("missing", ("/nonexistent/unshare",), False, False), "could not start"),
    (sandbox._Mode("fake-namespaces", (), True, False), "not in a private mount namespace"),
])
def test_a_broken_sandbox_is_a_sandbox_error_not_a_program_failure(monkeypatch, mode, detail):
    monkeypatch.setattr(sandbox, "_mode", mode)
    result = run(Job({"main.py": "print('fine')"}, limits=FAST))
    assert result.status == "sandbox_error" and not result.passed and result.stdout == ""
    assert detail in result.detail


# ---- the fallback without namespaces ---------------------------------------------------------------------------


@pytest.fixture
def plain_mode(monkeypatch):
    """Re-probe with namespaces switched off, as on a machine without ``unshare``."""
    monkeypatch.setenv("SANDBOX_MODE", "plain")
    monkeypatch.setattr(sandbox, "_mode", None)
    yield sandbox.isolation_mode()


@pytest.mark.parametrize("code,status", [("print(input())", "passed"), ("raise SystemExit(2)", "failed"),
                                         ("import os\nos.kill(os.getpid(), 11)", "crashed"), ("while True: pass", "timeout")])
def test_plain_mode_classifies_the_same_and_says_what_is_missing(plain_mode, code, status):
    result = run(Job({"main.py": code}, stdin="in", limits=FAST, collect=["main.py"]))
    assert plain_mode in ("plain", "plain+uid")
    assert result.status == status, result
    assert {"rlimits", "session"} <= set(result.isolation)
    assert not {"netns", "pidns", "mountns", "private-root"} & set(result.isolation)
    assert result.files == {"main.py": code}


def test_plain_mode_kills_the_process_group_and_removes_its_directory(plain_mode):
    code = ("import os, time\nprint(os.getcwd(), flush=True)\n"
            "if os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n"
            "time.sleep(10)")
    job, tag = tagged(code, limits=Limits(wall_seconds=1))
    result = run(job)
    assert result.status == "timeout"
    assert survivors(tag) == []
    assert not Path(result.stdout.strip()).exists()
