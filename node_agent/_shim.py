"""The task supervisor ("shim"): one small process per task attempt, between the agent and the task.

The runner starts it as ``<the agent's python> -I -S <this file> SPEC_FD REPORT_FD`` in a session
of its own, so it outlives the agent (a crash, or a shutdown that leaves tasks running). It:

1. reads its orders (a marshalled dict) from ``SPEC_FD`` and pins itself to the task's cores (the
   task inherits them: it is never unpinned, not even for a moment);
2. forks the task: the child starts a new session (its process group is its pid), enters the
   task's home, drops to the task user when asked (no supplementary groups, umask), restores the
   signals Python ignores, and execs the program, searching ``PATH`` as execvp does;
3. writes one marshalled tuple to ``REPORT_FD`` and closes it: ``("ok", task_pid, warning)`` once
   the program has exec'd, or ``("error", stage, errno, text, filename)`` (then exits 127). When
   nobody reads the report any more (the agent died before it heard of the task) it kills the task:
   no record would ever name it;
4. forwards stops from the agent: :data:`FORWARD_TERM` -> SIGTERM to the task's process group,
   :data:`FORWARD_KILL` -> SIGKILL (only the shim knows whether the task is still unreaped, so the
   group it signals is always the task's); SIGHUP, SIGINT and SIGQUIT are ignored;
5. waits for the task, kills whatever it left in its process group, and writes
   ``{"version", "pid", "returncode", "finished_at"}`` to ``exit.json`` in the task's directory
   (a temporary file renamed over it: a reader sees all of it or nothing). ``returncode`` is as
   asyncio's: the exit code, or -N when signal N killed the task.

A restarted agent finds the shim by pid and start time (``status.json``), watches it (a pidfd)
and reads ``exit.json`` when it ends. The agent's own user runs the shim (root when tasks run as
other users), and the task's directory is the agent's: a task cannot forge ``exit.json``.

It imports builtin modules only (``signal`` would pull in ``enum``): with ``-I -S`` the interpreter
starts in ~8 ms. Keep it that way, and keep ``exit.json`` readable by older and newer agents (a
shim outlives the agent that started it, and may be read by an upgraded one).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # builtin; no stub
import marshal
import posix
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs more than the rest of the shim
if TYPE_CHECKING:
    from typing import Any

#: Sent by the agent to the shim: SIGTERM the task's process group.
FORWARD_TERM: int = _signal.SIGTERM
#: Sent by the agent to the shim: SIGKILL the task's process group.
FORWARD_KILL: int = _signal.SIGUSR1
EXIT_FILE = "exit.json"
EXIT_VERSION = 1

_IGNORED = (_signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT)
#: What the task starts with at their defaults (Python ignores SIGPIPE and SIGXFSZ).
_RESTORED = (FORWARD_TERM, FORWARD_KILL, *_IGNORED, _signal.SIGPIPE, _signal.SIGXFSZ)


#: The task's pid once it has exec'd (0 before, and once it has been reaped).
_child = 0
#: Stops that arrived before the task had exec'd, delivered once it has.
_pending: list[int] = []


def _signal_group(pgid: int, sig: int) -> None:
    try:  # noqa: SIM105 - contextlib would import functools and collections at every task start
        posix.killpg(pgid, sig)
    except OSError:
        pass


def _forward(signum: int, _frame: Any) -> None:
    sig = _signal.SIGKILL if signum == FORWARD_KILL else _signal.SIGTERM
    if _child:
        _signal_group(_child, sig)
    else:
        _pending.append(sig)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = posix.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _exec_task(p: dict[str, Any], err_fd: int) -> None:
    """In the forked child: become the task and exec it; report what failed on ``err_fd``."""
    stage = "setup"
    try:
        for sig in _RESTORED:
            _signal.signal(sig, _signal.SIG_DFL)
        posix.setsid()
        stage = "chdir"
        posix.chdir(p["cwd"])
        if p["uid"] is not None:
            stage = "setuid"
            posix.setgroups([])
            posix.setgid(p["gid"])
            posix.setuid(p["uid"])
            if (posix.getuid(), posix.geteuid(), posix.getgid(), posix.getegid(), posix.getgroups()) != (
                p["uid"],
                p["uid"],
                p["gid"],
                p["gid"],
                [],
            ):
                raise PermissionError(1, "the user switch did not take")
        if p["umask"] is not None:
            posix.umask(p["umask"])
        stage = "exec"
        argv, env = p["argv"], p["env"]
        prog = argv[0]
        search = "/" not in prog
        if search:
            tries = [d + "/" + prog if d else prog for d in env.get("PATH", "/bin:/usr/bin").split(":")]
        else:
            tries = [prog]
        found = missing = None
        for path in tries:
            try:
                posix.execve(path, argv, env)
            except OSError as e:
                # A directory of PATH the task user cannot search (e.g. under /root) is "not found".
                gone = isinstance(e, (FileNotFoundError, NotADirectoryError))
                if search and isinstance(e, PermissionError):
                    gone = not posix.access(path.rpartition("/")[0] or ".", posix.X_OK)
                if gone:
                    missing = missing or FileNotFoundError(2, "No such file or directory", path)
                else:
                    found = found or e
        raise found or missing or FileNotFoundError(2, "No such file or directory", prog)
    except BaseException as e:
        errno = getattr(e, "errno", None) or 0
        text = getattr(e, "strerror", None) or repr(e)
        name = getattr(e, "filename", None)
        posix.write(
            err_fd, marshal.dumps(("error", stage, errno, text, name if isinstance(name, str) else ""))
        )
    finally:
        posix._exit(127)


def _report(fd: int, message: bytes) -> bool:
    """Write the report and close it; False when nobody reads it any more."""
    try:
        posix.write(fd, message)
        return True
    except OSError:
        return False
    finally:
        posix.close(fd)


def write_exit(path: str, tmp: str, pid: int, returncode: int, finished_at: float) -> None:
    """``exit.json``, atomically (tmp + rename), 0600."""
    data = (
        f'{{"version": {EXIT_VERSION}, "pid": {pid}, "returncode": {returncode}, '
        f'"finished_at": {finished_at:.6f}}}\n'
    )
    fd = posix.open(
        tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC, 0o600
    )
    try:
        posix.write(fd, data.encode())
    finally:
        posix.close(fd)
    posix.rename(tmp, path)


def main(argv: list[str]) -> int:
    global _child
    spec_fd, report_fd = int(argv[1]), int(argv[2])
    posix.set_inheritable(report_fd, False)  # the task must not hold the agent's pipe
    p = marshal.loads(_read_all(spec_fd))
    posix.close(spec_fd)
    for sig in _IGNORED:
        _signal.signal(sig, _signal.SIG_IGN)
    _signal.signal(FORWARD_TERM, _forward)
    _signal.signal(FORWARD_KILL, _forward)
    warning = ""
    if p["cores"]:
        try:
            posix.sched_setaffinity(0, p["cores"])
        except OSError as e:
            warning = f"cannot set CPU affinity {p['cores']}: {e.strerror or e}"
    read_end, write_end = posix.pipe()  # close-on-exec: a successful exec closes the child's end
    pid = posix.fork()
    if pid == 0:
        posix.close(read_end)
        _exec_task(p, write_end)
    posix.close(write_end)
    failure = _read_all(read_end)
    posix.close(read_end)
    for fd in p["pass_fds"]:  # the task's now; the shim has no use for them
        posix.close(fd)
    if failure:
        posix.waitpid(pid, 0)
        _report(report_fd, failure)
        return 127
    _child = pid
    heard = _report(report_fd, marshal.dumps(("ok", pid, warning)))
    for sig in _pending:
        _signal_group(pid, sig)
    if not heard:
        _signal_group(pid, _signal.SIGKILL)
    _, status = posix.waitpid(pid, 0)  # retried after a forwarded stop (PEP 475)
    _child = 0
    # Whatever the task left in its group goes with it. The group id cannot be reused while any
    # member lives; once the group is empty this fails (ESRCH).
    _signal_group(pid, _signal.SIGKILL)
    write_exit(p["exit_path"], p["exit_tmp"], pid, posix.waitstatus_to_exitcode(status), time.time())
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BaseException as exc:  # the agent reads an empty report (or no exit.json) and says so
        posix.write(2, f"domainos-agent: task supervisor failed: {exc!r}\n".encode())
        code = 126
    posix._exit(code)
