"""Time and duration parsing and rendering. All times are integer epoch milliseconds (UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

from observer.limits import MAX_DURATION_MS

__all__ = [
    "MAX_DURATION_MS",
    "MAX_TIME_MS",
    "MIN_TIME_MS",
    "format_duration",
    "format_time",
    "parse_duration",
    "parse_time",
]

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SHORT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_ISO_UNITS_MS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> int:
    """Parse `250ms`, `30s`, `5m`, `4h`, `2d` or ISO-8601 (`PT5M`, `P1DT2H`) into ms.

    Raises ValueError with a plain-words message on anything else, including zero, negative
    and longer than MAX_DURATION_MS (100 years). The number is read exactly (no float), so
    no length of digits can overflow; a fraction of a millisecond rounds half to even.
    """
    s = str(text).strip()
    m = _SHORT.match(s)
    if m:
        ms = Decimal(m.group(1)) * _UNITS_MS[m.group(2)]
    else:
        iso = _ISO.match(s.upper())
        if not iso or s.upper() in ("P", "PT") or s.upper().endswith("T"):
            raise ValueError(
                f"'{_short(text)}' is not a duration (use 250ms, 30s, 5m, 4h, 2d or ISO-8601 "
                "like PT5M)"
            )
        parts = {k: Decimal(v) for k, v in iso.groupdict().items() if v is not None}
        ms = sum(
            (parts.get(unit, Decimal(0)) * size for unit, size in _ISO_UNITS_MS),
            start=Decimal(0),
        )
    if ms > MAX_DURATION_MS:
        raise ValueError(
            f"'{_short(text)}' is longer than the longest duration the observer keeps "
            f"({MAX_DURATION_MS // 86_400_000}d)"
        )
    whole = int(ms.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if whole <= 0:
        raise ValueError(f"'{_short(text)}' is not a positive duration (at least 1ms)")
    return whole


def _short(text: object, limit: int = 40) -> str:
    """`text` for a message: at most `limit` characters."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def format_duration(ms: int) -> str:
    """Render ms as a compact duration: `1m30s`, `2d4h`, `250ms`, `0s`; negative gets a `-`."""
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    rest = abs(ms)
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        out.append(f"{rest}ms")
    return sign + "".join(out)


@lru_cache(maxsize=4096)
def _day(days: int) -> str:
    d = (_EPOCH + timedelta(days=days)).date()
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"  # strftime drops the zeros of year 1


@lru_cache(maxsize=65536)
def _second(sec: int) -> str:
    days, rest = divmod(sec, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    return f"{_day(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}"


def format_time(ms: int) -> str:
    """Render epoch ms as ISO-8601 UTC: `2026-01-01T00:00:00Z`, with `.250` when ms is non-zero."""
    sec, frac = divmod(ms, 1000)
    if frac:
        return f"{_second(sec)}.{frac:03d}Z"
    return _second(sec) + "Z"


_OFFSET = re.compile(r"[+-]([0-9]{2}):?([0-9]{2})(?::?[0-9]{2}(?:\.[0-9]+)?)?$")
# What an ISO-8601 event time may look like (extended format): `datetime.fromisoformat` alone
# also takes "03:34:00:00" or "12:00.702" (minutes with a fraction), which are not ISO-8601.
_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)

# Event times the observer accepts: years 1 to 9000 (deadlines, windows and `expire` added to
# them must still render as ISO-8601, which ends with year 9999).
MIN_TIME_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TIME_MS = 221_845_392_000_000  # 9000-01-01T00:00:00Z


def parse_time(raw: object) -> int:
    """Parse an event time: epoch ms (int, float or digit string) or ISO-8601 text.

    ISO-8601 text without an offset is read as UTC. Raises ValueError when it cannot be read
    or lies outside years 1 to 9000.
    """
    ms = _parse_time(raw)
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise ValueError(f"time {_short(repr(raw))} is out of range (years 1 to 9000)")
    return ms


def _parse_time(raw: object) -> int:
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"time {_short(repr(raw))} is not epoch ms or ISO-8601")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise ValueError(f"time {_short(repr(raw))} is not a number")
        return int(raw)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        s = raw.strip()
        if s.lstrip("-").isdigit():
            if len(s) > 20:  # beyond 64 bits: out of range, and no quadratic int() of it
                raise ValueError(f"time {_short(repr(raw))} is out of range (years 1 to 9000)")
            return int(s)
        if _ISO_TIME.fullmatch(s) is None:
            raise ValueError(f"time {_short(repr(raw))} is not epoch ms or ISO-8601")
        try:
            dt = datetime.fromisoformat(s.replace("z", "Z").replace("t", "T", 1))
        except ValueError:
            raise ValueError(f"time {_short(repr(raw))} is not epoch ms or ISO-8601") from None
        offset = _OFFSET.search(s)
        if offset is not None and int(offset.group(2)) > 59:  # Python takes "+00:80"
            raise ValueError(f"time {_short(repr(raw))} is not epoch ms or ISO-8601")
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise ValueError(f"time {_short(repr(raw))} is not epoch ms or ISO-8601")
