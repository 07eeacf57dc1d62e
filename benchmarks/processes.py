"""The processes a measurement runs and the loop that measures them: start, follow a commit
watch until complete, sample CPU and memory, scrape /metrics, stop by pid. Also the webhook
sink the flow's `page_oncall` posts to."""

from __future__ import annotations

import contextlib
import http.server
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from benchmarks.common import REPO, ProcSampler, log

if TYPE_CHECKING:
    from benchmarks.harness import Run


class _Sink(http.server.BaseHTTPRequestHandler):
    """Accepts webhook POSTs (the flow's `page_oncall`) and counts them."""

    count = 0

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        type(self).count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def webhook_sink(port: int) -> Iterator[type[_Sink]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield _Sink
    finally:
        server.shutdown()
        server.server_close()


def scrape_metrics(port: int) -> dict[str, float]:
    """Sums of the observer's counters and gauges by metric name (labels summed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("observer_") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            sums[base] = sums.get(base, 0.0) + float(value)
    return sums


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30
) -> list[int | None]:
    """SIGTERM each (by pid), wait, SIGKILL what is left; their exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return [p.returncode for p in procs]


class Watch(Protocol):
    """What the measurement loop needs of a commit watcher (CommitWatch, DurableWatch)."""

    @property
    def total(self) -> int: ...

    @property
    def complete(self) -> bool: ...

    def sample(self) -> int: ...

    def progress(self) -> str: ...

    def first(self) -> tuple[float, int] | None: ...

    def rate(self) -> dict[str, Any]: ...


@dataclass
class Launch:
    """One process of a measurement."""

    cmd: list[str]
    log: str  # log file name (logs/<log>.log)
    env: dict[str, str] | None = None
    port: int | None = None  # the observer's ops API: /metrics is scraped before it stops


@dataclass
class Measured:
    """What `measure_processes` saw."""

    stopped: str  # complete | a process exited | timeout
    rate: dict[str, Any]
    startup_s: float | None  # launch to the first commit
    sampler: ProcSampler
    exit_codes: list[int | None]
    metrics: list[dict[str, float]]  # per process with a port
    extra: dict[str, Any]  # what `before_stop` returned

    def figures(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            **self.rate,
            "startup_s": self.startup_s,
            **self.sampler.summary(),
            "events_per_cpu_s": _per_cpu(self.rate, self.sampler),
            "exit_codes": self.exit_codes,
        }


def _per_cpu(rate: dict[str, Any], sampler: ProcSampler) -> float | None:
    """Events per CPU second of the measured processes, from the first commit to completion
    (startup and the settle time after it are left out)."""
    if sampler.cpu_at_first is None or sampler.cpu_at_done is None:
        return None
    cpu = sampler.cpu_at_done - sampler.cpu_at_first
    return rate["events"] / cpu if cpu > 0 else None


def watch_until_done(
    run: Run,
    watch: Watch,
    procs: Sequence[subprocess.Popen[bytes]],
    sampler: ProcSampler,
) -> str:
    """Sample commits (every 0.1 s) and processes (every 0.5 s) until the watch is complete, a
    process dies, or the timeout. Returns why it stopped."""
    t_end = time.monotonic() + run.args.timeout
    next_proc = 0.0
    last_log = time.monotonic()
    while True:
        n = watch.sample()
        now = time.monotonic()
        if now >= next_proc or (n > 0 and sampler.cpu_at_first is None):
            sampler.sample()
            next_proc = now + 0.5
            if n > 0 and sampler.cpu_at_first is None:
                sampler.cpu_at_first = sum(sampler.cpu_s.values())
        if watch.complete:
            sampler.sample()
            sampler.cpu_at_done = sum(sampler.cpu_s.values())
            return "complete"
        if any(p.poll() is not None for p in procs):
            return "a process exited"
        if now > t_end:
            return "timeout"
        if now - last_log > 10:
            log(f"  {watch.progress()}")
            last_log = now
        time.sleep(0.1)


def measure_processes(
    run: Run,
    watch: Watch,
    launches: Sequence[Launch],
    settle_s: float,
    before_stop: Callable[[], dict[str, Any]] | None = None,
) -> Measured:
    """The measurement loop every throughput-like part shares: start the processes, follow
    the watch until complete (or a process exits, or the timeout), wait `settle_s` (the
    deadline tail), sample the processes, scrape /metrics, run `before_stop`, stop them."""
    t_launch = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for launch in launches:
            f = run.logfile(launch.log)
            logs.append(f)
            procs.append(
                subprocess.Popen(
                    launch.cmd, stdout=subprocess.DEVNULL, stderr=f, env=launch.env, cwd=REPO
                )
            )
        sampler = ProcSampler([p.pid for p in procs])
        why = watch_until_done(run, watch, procs, sampler)
        time.sleep(settle_s)
        sampler.sample()
        metrics = [scrape_metrics(x.port) for x in launches if x.port is not None]
        extra = before_stop() if before_stop is not None else {}
    finally:
        codes = stop_processes(procs)
        for f in logs:
            f.close()
    first = watch.first()
    return Measured(
        stopped=why,
        rate=watch.rate(),
        startup_s=(first[0] - t_launch) if first is not None else None,
        sampler=sampler,
        exit_codes=codes,
        metrics=metrics,
        extra=extra,
    )
