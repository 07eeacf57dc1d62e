"""Masks for URLs that may carry secrets, applied before a URL reaches a log line, an instance
history, the ops API or `observer status`. Pure functions.

- `mask_url` (service URLs: Redis, the schema registry): the password in the userinfo and the
  values of query options named like secrets (`password`, `secret`, `token`, `key`, ...)
  become `***`; the rest stays, so the address is still recognisable.
- `mask_webhook_url`: only `scheme://host[:port]`, then `/…` if there was more. Webhook URLs
  often carry their credential in the path (`/services/T000/B000/XXXX`) or the query
  (`?token=`), in any spelling, so nothing after the host is shown; the userinfo is dropped.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["MASK", "mask_url", "mask_webhook_url"]

MASK = "***"
_SECRET_OPTION = re.compile(
    r"(pass|pwd|secret|token|credential|auth|signature|sig$|^key$|api[_-]?key|access[_-]?key)",
    re.I,
)


def _host(hostname: str | None, port: int | None) -> str:
    host = hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _split(url: str) -> tuple[SplitResult, str] | None:
    """The URL's parts and its `host[:port]` as shown; None when it does not parse."""
    try:
        parts = urlsplit(url)
        return parts, _host(parts.hostname, parts.port)
    except ValueError:
        return None


def mask_url(url: str) -> str:
    """`url` with the userinfo password and secret-looking query values replaced by ***."""
    split = _split(url)
    if split is None:
        return MASK
    parts, host = split
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{quote(k, safe='')}={MASK if _SECRET_OPTION.search(k) else quote(v, safe='/:')}"
            for k, v in pairs
        )
    netloc = parts.netloc
    if parts.password is not None or "@" in netloc:
        user = parts.username or ""
        userinfo = f"{user}:{MASK}@" if parts.password is not None else f"{user}@"
        netloc = userinfo + host
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_webhook_url(url: str) -> str:
    """`scheme://host[:port]/…`: what is safe to show of a webhook URL."""
    split = _split(url)
    if split is None or not split[0].scheme or not split[0].hostname:
        return MASK
    parts, host = split
    shown = f"{parts.scheme}://{host}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        shown += "/…"
    return shown
