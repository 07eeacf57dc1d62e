"""`Service`: the running observer (loop + ops API) with one lifecycle: `run` in the current
thread (the CLI) or `start` in a background thread (tests), `stop` from anywhere."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from observer.errors import ConfigError, ObserverError
from observer.runtime.backoff import Backoff
from observer.runtime.loop import Runtime

__all__ = ["Service"]

log = logging.getLogger(__name__)


class Server(Protocol):
    port: int

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


class Service:
    """Runs `prepare` (retried until it succeeds, unless it raises ConfigError), starts the
    HTTP server, runs the loop until `stop()`, then closes everything."""

    def __init__(
        self,
        runtime: Runtime,
        http: Server | None,
        *,
        prepare: Callable[[], None] | None = None,
        banner: str = "",
        closers: list[Callable[[], None]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.http = http
        self._prepare = prepare
        self._banner = banner
        self._closers = closers or []
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    def stop(self) -> None:
        self.runtime.stop()

    def run(self) -> None:
        """Blocks until stopped. Raises ConfigError (bad settings) or ObserverError."""
        try:
            if self.http is not None:
                self.http.start()
            self._prepare_with_retries()
            if self.runtime.stopping:
                return
            if self._banner:
                log.info("%s", self._banner)
            self.runtime.run()
        finally:
            if self.http is not None:
                self.http.stop()
            for close in self._closers:
                try:
                    close()
                except Exception as exc:
                    log.warning("closing: %s", exc)

    def _prepare_with_retries(self) -> None:
        if self._prepare is None:
            return
        backoff = Backoff(0.5, 10.0)
        while not self.runtime.stopping:
            try:
                self._prepare()
                return
            except ConfigError:
                raise
            except ObserverError as exc:
                delay = backoff.next()
                log.error("%s; retrying in %.1fs", exc, delay)
                self.runtime.sleep(delay)

    def start(self) -> None:
        """Run in a background thread; `wait_started` to know it is attached."""

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                self.error = exc
                log.exception("observer service failed")

        self._thread = threading.Thread(target=target, name="observer-loop", daemon=True)
        self._thread.start()

    def wait_started(self, timeout_s: float) -> bool:
        deadline = threading.Event()
        waited = 0.0
        while waited < timeout_s:
            if self.runtime.started.is_set():
                return True
            if self._thread is not None and not self._thread.is_alive():
                return False
            deadline.wait(0.02)
            waited += 0.02
        return self.runtime.started.is_set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the background thread; True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
