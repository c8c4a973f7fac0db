"""Start and stop background processes by pid file, and wait for them without blind sleeps."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


class StackError(RuntimeError):
    """A stack component failed to install, start or answer."""


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


# Where free_port looks: above Linux's ephemeral range (32768–60999 by default), from which the
# kernel hands out the local ports of outgoing connections and of binds to port 0; the stack's
# own ports (settings, CI's) are all below it.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started a moment later. Taken above the
    ephemeral range: a port the kernel gave out for a bind to port 0 is also one it may give
    to the next outgoing connection, which then holds it when the server binds (a bench's
    Flink REST endpoint failed so once). Falls back to the kernel's pick when none is free
    there or the range is unknown."""
    try:
        first = int(EPHEMERAL_RANGE.read_text().split()[1]) + 1
    except (OSError, ValueError, IndexError):
        first = 65_536
    for port in random.sample(range(first, 65_536), min(64, max(0, 65_536 - first))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``check`` until true; fail fast if ``proc`` died, with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what}: process exited with {proc.returncode}{_tail(log)}")
        time.sleep(0.1)
    raise StackError(f"{what}: not ready after {timeout_s:.0f}s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-15:]
    return "\n  " + "\n  ".join(lines)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Managed:
    """One background process known by its pid file."""

    def __init__(self, name: str, run_dir: Path):
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"
        self.log = run_dir / f"{name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: Sequence[str], env: dict | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        return proc

    def kill(self) -> None:
        """kill -9 the process group: a crash, not a shutdown."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), f"{self.name} to die", 30)
        self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            try:  # reap if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_file.unlink(missing_ok=True)
        return True
