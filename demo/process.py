"""`observer run` as a child process of the demo: started with the run's own group id and Redis
key prefix, its log sent to a file, asked to stop with SIGTERM (killed if it does not)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from demo.wire import DemoError

__all__ = ["ObserverProcess", "free_port"]


def free_port() -> int:
    """A TCP port nobody listens on right now (asked from the kernel, not guessed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the observer gets SIGTERM if the demo dies without cleaning up (kill -9).
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ObserverProcess:
    """One `observer run FLOW` process. Use `start`, `wait_ready`, `stop`."""

    def __init__(
        self,
        flow_file: str,
        *,
        bootstrap: str,
        redis_url: str,
        group_id: str,
        key_prefix: str,
        http_port: int,
        log_file: Path,
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "observer.cli",
            "run",
            flow_file,
            "--bootstrap-servers",
            bootstrap,
            "--redis-url",
            redis_url,
            "--group-id",
            group_id,
            "--key-prefix",
            key_prefix,
            "--http-port",
            str(http_port),
        ]
        self.http_port = http_port
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        # its own session: Ctrl-C in the terminal reaches the demo, which stops the observer
        # after the simulator, in that order
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env=os.environ.copy(),
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until `/readyz` answers 200 (Kafka and Redis attached, loop turning)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise DemoError(
                        f"observer run exited with code {self.returncode()} while starting:\n{self.tail()}"
                    )
                try:
                    r = client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return
                    last = r.text.strip()[:300]
                except httpx.HTTPError as exc:
                    last = str(exc) or type(exc).__name__
                time.sleep(0.2)
        raise DemoError(
            f"observer run not ready after {timeout_s:.0f}s ({last}); its log:\n{self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (the observer finishes its batch and commits), SIGKILL after `timeout_s`."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            return proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
