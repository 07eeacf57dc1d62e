"""Webhook POSTs over httpx (used by the runtime's webhook workers)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

__all__ = ["HttpxPoster"]


class HttpxPoster:
    """`post(url, body, headers) -> status` with one pooled, thread-safe httpx client."""

    def __init__(self, timeout_s: float) -> None:
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        return self._client.post(url, content=body, headers=dict(headers)).status_code

    def close(self) -> None:
        self._client.close()
