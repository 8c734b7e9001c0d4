"""Background jobs, generically: one runner at a time per folder (a file lock), a detached process, a cancel signal,
a status file and a log.

Used by :mod:`lens.build` (the background build of every model) and meant for any later long job (a training run
launched from the dashboard): the dashboard and the CLI never hold the job in memory, they read its files.

* :class:`JobLock` is an OS file lock (``flock`` through ``filelock``): the kernel releases it when the runner dies,
  even by ``kill -9``, so a crashed job never blocks the next one. Beside the lock, ``<lock>.json`` says who holds it
  (pid, since when, what), so a refused second start can say so.
* :func:`start_detached` starts a command in a new session (it survives the terminal, the browser tab and the
  Streamlit server that started it), stdout/stderr appended to a log file.
* :class:`CancelFlag` turns SIGTERM into a flag the job checks at safe points (between batches, between steps): a
  cancelled job stops at a point where every file it wrote is complete (lens writes through
  :func:`lens.store.atomic_write`).

Bottom layer: the standard library, ``filelock`` and :mod:`lens.store` / :mod:`lens.errors` only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lens.errors import LensError
from lens.store import read_json, utc_now, write_json


class JobRunningError(LensError):
    """Another runner holds the job's lock; the message names its pid and since when it runs."""

    def __init__(self, message: str, holder: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


class JobCancelled(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt, not an error
    """Raised at a safe point after SIGTERM (a BaseException, so no ``except Exception`` of a recipe swallows it)."""


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie (exited, not yet reaped by its parent) is not a running job
        with open(f"/proc/{int(pid)}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def format_duration(seconds: float | None) -> str:
    """``80`` -> ``"1m20s"``, ``3725`` -> ``"1h02m"``, ``7`` -> ``"7s"``; ``None`` -> ``"?"``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class JobLock:
    """One runner at a time: a non-blocking OS file lock at ``path`` plus a ``<path>.json`` naming the holder.

    Example::

        lock = JobLock(cache / "build" / "build.lock")
        with lock.hold(what="build"):  # raises JobRunningError when another runner holds it
            ...
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.info_path = self.path.with_name(self.path.name + ".json")
        self._lock: Any = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (``{"pid", "since", "what"}``), or ``None`` when nobody does."""
        if self._lock is not None:
            return read_json(self.info_path)
        probe = self._try_lock()
        if probe is not None:
            probe.release()
            return None
        return read_json(self.info_path) or {"pid": None, "since": "?", "what": "?"}

    def _try_lock(self, timeout: float = 0) -> Any:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return None
        return lock

    def acquire(self, what: str = "job", *, wait: float = 1.0, **extra: Any) -> None:
        """Take the lock or raise :class:`JobRunningError` (pid and start time of the holder in the message).

        ``wait``: seconds to keep trying, so that a :meth:`holder` probe (it holds the lock for microseconds) never
        makes a starting job fail.
        """
        lock = self._try_lock(wait)
        if lock is None:
            info = read_json(self.info_path) or {}
            raise JobRunningError(
                f"a {info.get('what', what)} is already running (pid {info.get('pid', '?')}, since "
                f"{info.get('since', '?')}); wait for it, or stop it first.",
                info,
            )
        self._lock = lock
        try:
            write_json(self.info_path, {"pid": os.getpid(), "since": utc_now(), "what": what, **extra})
        except OSError:
            pass  # a full disk: the lock still holds, only the message of a refused start is poorer

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.info_path.unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def start_detached(
    argv: Sequence[str], *, log_path: Path, cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start ``argv`` in a new session, stdin from /dev/null, stdout and stderr appended to ``log_path``.

    The child outlives the caller (the CLI returns at once, a Streamlit rerun or server restart does not stop it).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    # Reap it in the background when it ends, so a long-lived parent (the dashboard) keeps no zombie.
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc


def wait_for_holder(lock: JobLock, proc: subprocess.Popen, *, timeout: float = 120.0) -> bool:
    """Wait until the detached ``proc`` holds ``lock`` (``True``) or has ended (``False``, e.g. another runner held
    the lock). Reads the holder file only: no probe that could make the starting job wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_json(lock.info_path) or {}
        if info.get("pid") == proc.pid:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return proc.poll() is None


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: the same interpreter (and virtual environment) as the caller."""
    return [sys.executable, "-m", module, *args]


def terminate(pid: int) -> bool:
    """Send SIGTERM to ``pid`` (the job stops at its next safe point); ``False`` when it is already gone."""
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


class CancelFlag:
    """SIGTERM (and SIGINT) -> a flag; :meth:`check` raises :class:`JobCancelled` at the job's next safe point.
    A second signal raises it at once, wherever the job is."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> CancelFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():  # asked twice: stop now (lens's writes are atomic; a half-done step is redone)
            raise JobCancelled()
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise JobCancelled()


class JobLog:
    """A plain-text log: one timestamped line per message, appended (reopened each time: a deleted log reappears)."""

    def __init__(self, path: Path, *, echo: bool = False) -> None:
        self.path = Path(path)
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.echo:
            print(line, file=sys.stderr, flush=True)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as exc:  # a full disk must not stop the job; say so where someone may see it
            print(f"{line} (log not written: {exc})", file=sys.stderr)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file (``""`` when it does not exist); progress-bar carriage returns are
    collapsed to the last update of each line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            last = deque(fh, maxlen=lines)
    except OSError:
        return ""
    return "".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r\n") else line for line in last)


def write_status(path: Path, status: Mapping[str, Any]) -> bool:
    """Write a job's status JSON atomically; ``False`` (and nothing raised) when the disk refuses it."""
    try:
        write_json(path, {**status, "updated": utc_now()})
    except OSError:
        return False
    return True


def read_status(path: Path) -> dict[str, Any] | None:
    """A job's status JSON, or ``None`` (also when a field has the wrong type: an older lens wrote it, or a hand)."""
    status = read_json(path)
    if status is None:
        return None
    pid, steps = status.get("pid"), status.get("steps", [])
    if (
        (pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)))
        or not isinstance(status.get("state", ""), str)
        or not isinstance(steps, list)
        or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in steps)
    ):
        return None
    return status
