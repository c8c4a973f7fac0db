"""Run a Herald job in its own process, as a user would, and stop or kill it; wait for what a
job on the standalone cluster does (its REST API)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from herald.settings import PROJECT_ROOT, Settings, settings_env


class RunningJob:
    """A job on the embedded MiniCluster in a child process (so a test can kill -9 it)."""

    def __init__(self, module: str, settings: Settings, log_dir: Path, *args: str):
        self.log_path = log_dir / f"{module.replace('.', '_')}.log"
        env = {**os.environ, **settings_env(settings)}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"job exited with {self.proc.returncode}:\n{tail}")

    def kill(self) -> None:
        """kill -9 the whole process group: the Python client and its MiniCluster JVM."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def __enter__(self) -> "RunningJob":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(condition, what: str, timeout_s: float = 180.0, every_s: float = 0.1):
    """Poll ``condition`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def restored_from(rest: str, job_id: str) -> str | None:
    """The savepoint or checkpoint path the job restored from, once it has (REST API)."""
    answer = requests.get(f"{rest}/jobs/{job_id}/checkpoints", timeout=5)
    if answer.status_code != 200:
        return None
    restored = (answer.json().get("latest") or {}).get("restored") or {}
    return restored.get("external_path")


def subtask_records(rest: str, job_id: str, operator: str) -> list[int]:
    """Records read by each subtask of the task whose name holds ``operator`` (REST API);
    empty until the job lists it."""
    answer = requests.get(f"{rest}/jobs/{job_id}", timeout=5)
    if answer.status_code != 200:
        return []
    vertex = next((v for v in answer.json().get("vertices", []) if operator in v["name"]), None)
    if vertex is None:
        return []
    detail = requests.get(f"{rest}/jobs/{job_id}/vertices/{vertex['id']}", timeout=5).json()
    return [s.get("metrics", {}).get("read-records", 0) for s in detail.get("subtasks", [])]
