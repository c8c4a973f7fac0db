"""Run a Herald job in its own process, as a user would, and stop or kill it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
