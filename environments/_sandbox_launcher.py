"""The trusted child side of ``cascade.environments.sandbox``: it builds the jail, runs one job in it, reports.

Run as ``python -I -S _sandbox_launcher.py STATUS_FD`` (stdlib only: no site-packages, no cascade import), either
directly or as the first process of fresh namespaces made by ``unshare --net --pid --mount --ipc --fork``. It reads
one job spec from stdin (a decimal byte count, a newline, that many bytes of ``marshal``: the parent is trusted, and
unlike json it costs no import); whatever follows on stdin is the job's own stdin, left unread for the job. It reports
one Python literal per line on STATUS_FD (``repr`` here, ``ast.literal_eval`` there), which the job never holds:

* ``{"event": "ready", "isolation": [...]}`` once the jail is built, naming each protection it *verified*;
* ``{"event": "exit", "returncode" | "signal": n, "cpu_seconds": s, "files": {...}}`` after the job and everything it
  left behind are dead and the ``collect`` files are read back;
* ``{"event": "error", "detail": "..."}`` when the jail could not be built or the job could not be started.

Inside the namespaces (we are root there), the job gets a private root: a size-capped tmpfs holding read-only binds of
the system directories and the interpreter's prefix, device nodes null/zero/full/random/urandom, a proc of its own pid
namespace, a writable ``/tmp`` and its work directory ``/job``; it is ``chroot``-ed there and runs under a fresh
unprivileged uid (so RLIMIT_NPROC counts only its own processes and it cannot signal or ptrace us), with
no-new-privileges and resource limits. Without namespaces it runs in a fresh temporary directory of the host with the
same limits (and the fresh uid when we are root), in a directory the parent made.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import stat
import sys

JOB_DIR = "/job"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """The jail could not be built: the sandbox's fault, not the program's."""


# ---- reading files the job wrote, without following its symlinks or blocking on its FIFOs ----------------------


def read_collected(root: str, paths, cap: int) -> dict[str, str]:
    """``{path: text}`` for each relative path that is a regular file under ``root`` (at most ``cap`` bytes read).

    Every component is opened with O_NOFOLLOW relative to its parent, so a symlink planted by the job (to
    ``/etc/shadow``, to a secret, to a FIFO) is never followed, and O_NONBLOCK keeps a FIFO from blocking us.
    """
    files = {}
    for path in paths:
        parts = path.split("/")
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                fd_next = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = fd_next
            leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        try:
            if stat.S_ISREG(os.fstat(leaf).st_mode):
                chunks, size = [], 0
                while size < cap and (chunk := os.read(leaf, min(cap - size, 1 << 16))):
                    chunks.append(chunk)
                    size += len(chunk)
                files[path] = b"".join(chunks).decode("utf-8", "replace")
        finally:
            os.close(leaf)
    return files


# ---- building the jail (namespaces only) ------------------------------------------------------------------------


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise SetupError(f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def _bind_readonly(source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _namespaces(spec: dict) -> list[str]:
    """The namespaces we are verifiably in: each differs from the parent's (its inode numbers are in the spec)."""
    active = []
    for name, label in (("net", "netns"), ("pid", "pidns"), ("mnt", "mountns"), ("ipc", "ipcns")):
        if os.stat(f"/proc/self/ns/{name}").st_ino != spec["parent_ns"][name]:
            active.append(label)
    if "pidns" in active and os.getpid() != 1:
        active.remove("pidns")
    if "netns" in active:
        with open("/proc/self/net/dev") as f:
            interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        if interfaces != ["lo"]:
            active.remove("netns")
    return active


def build_root(spec: dict, root: str) -> None:
    """Mount the job's private root at ``root`` (a directory of our private mount namespace)."""
    size = spec["limits"]["file_size_mb"] * (1 << 20) + sum(len(t.encode()) for t in spec["files"].values())
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},nr_inodes={4096 + len(spec['files'])},mode=755")
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind_readonly(path, root + path)
    for prefix in spec["interpreter_dirs"]:
        if not os.path.isdir(root + prefix) or not os.listdir(root + prefix):  # not already inside a bound system dir
            _bind_readonly(prefix, root + prefix)
    os.makedirs(root + "/dev", mode=0o755)
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    for path in ("/dev/shm", "/tmp"):
        os.makedirs(root + path, mode=0o777)
        os.chmod(root + path, 0o1777)
    os.makedirs(root + "/proc", mode=0o555)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + JOB_DIR, mode=0o700)


# ---- the job ----------------------------------------------------------------------------------------------------


def write_files(workdir: str, files: dict[str, str], uid: int | None) -> None:
    """Write the job's files (paths already validated relative by the parent) and hand them to ``uid``."""
    for rel, text in files.items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, uid)


def _exec_job(spec: dict, chroot: str | None, workdir: str, errpipe: int) -> None:
    """In the forked child: limits, jail, identity, then exec the interpreter. Never returns."""
    step = "start"
    try:
        limits = spec["limits"]
        step = "rlimits"
        mb = 1 << 20
        for kind, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                            (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
                            (resource.RLIMIT_NOFILE, limits["open_files"])):
            resource.setrlimit(kind, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
        if chroot is not None:
            step = "chroot"
            os.chroot(chroot)
        step = "chdir"
        os.chdir(workdir)
        if spec["uid"] is not None:
            step = "setuid"
            os.setgroups([])
            os.setresgid(spec["uid"], spec["uid"], spec["uid"])
            os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        step = "no_new_privs"
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        step = "exec"
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by our interpreter; exec would keep them ignored
            signal.signal(sig, signal.SIG_DFL)
        os.execve(spec["python"], [spec["python"], "-I", "-S", *spec["command"]], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - whatever happened, the parent must hear it and we must not return
        try:
            os.write(errpipe, f"{step}: {exc}".encode())
        finally:
            os._exit(127)


def _kill_leftovers(spec: dict, pid: int, in_pidns: bool) -> None:
    """Kill everything the job left running: the whole pid namespace when we are its init, else the job's uid."""
    if in_pidns:
        try:
            os.kill(-1, signal.SIGKILL)  # from a namespace's init: every other process of the namespace
        except ProcessLookupError:
            pass
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if spec["uid"] is not None:  # the uid is this job's alone: kill(-1) from it reaches every process it started
        killer = os.fork()
        if killer == 0:
            try:
                os.setresuid(spec["uid"], spec["uid"], spec["uid"])
                for _ in range(100):
                    os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(killer, 0)


def run_job(spec: dict, report) -> None:
    in_namespaces = spec["namespaces"]
    isolation = _namespaces(spec) if in_namespaces else []
    if in_namespaces and "mountns" not in isolation:
        raise SetupError("asked to build the jail but not in a private mount namespace")
    if in_namespaces:
        chroot = "/tmp"  # our namespace's /tmp: the tmpfs mounted there hides the host's
        build_root(spec, chroot)
        workdir, hostdir = JOB_DIR, chroot + JOB_DIR
        isolation.append("private-root")
    else:
        chroot = None
        workdir = hostdir = spec["workdir"]  # made by the parent, which also removes it (even if we are killed)
        if os.getsid(0) == os.getpid():
            isolation.append("session")
    write_files(hostdir, spec["files"], spec["uid"])
    os.chmod(hostdir, 0o700)
    if spec["uid"] is not None:
        isolation.append("uid")
    isolation += ["no-new-privs", "rlimits", "python-isolated", "clean-env"]
    report({"event": "ready", "isolation": isolation})

    errpipe_r, errpipe_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(errpipe_r)
        _exec_job(spec, chroot, workdir, errpipe_w)
    os.close(errpipe_w)
    with os.fdopen(errpipe_r, "rb") as f:
        exec_error = f.read().decode()
    _, wstatus, usage = os.wait4(pid, 0)
    _kill_leftovers(spec, pid, "pidns" in isolation)
    if exec_error:
        raise SetupError(f"could not start the job: {exec_error}")
    result = {"event": "exit", "cpu_seconds": usage.ru_utime + usage.ru_stime}
    if os.WIFSIGNALED(wstatus):
        result["signal"] = os.WTERMSIG(wstatus)
    else:
        result["returncode"] = os.waitstatus_to_exitcode(wstatus)
    result["files"] = read_collected(hostdir, spec["collect"], spec["limits"]["file_size_mb"] << 20)  # RLIMIT_FSIZE: whole
    report(result)


def _read_spec() -> dict:
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            raise SetupError("stdin closed before the job spec")
        header += byte
    size, data = int(header), b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            raise SetupError("stdin closed inside the job spec")
        data += chunk
    return marshal.loads(data)


def _expire(signum, frame) -> None:
    """Our own wall clock, a second after the parent's: it only fires when the parent died without killing us."""
    try:
        if os.getpid() == 1:
            os.kill(-1, signal.SIGKILL)  # every other process of our pid namespace
        else:
            os.killpg(0, signal.SIGKILL)  # our process group, the job included, and us
    finally:
        os._exit(1)


def main() -> None:
    status_fd = int(sys.argv[1])
    os.set_inheritable(status_fd, False)

    def report(event: dict) -> None:
        os.write(status_fd, (repr(event) + "\n").encode())

    try:
        spec = _read_spec()
        signal.signal(signal.SIGALRM, _expire)
        signal.alarm(int(spec["limits"]["wall_seconds"]) + 2)
        run_job(spec, report)
    except Exception as exc:  # noqa: BLE001 - the parent classifies this as a sandbox error, never the program's
        report({"event": "error", "detail": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
