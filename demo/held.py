"""The actions the observer holds (`--outage`, guardrails), read from its Redis the way
`observer actions list` reads them; and the command lines that show, release or drop them for
this run."""

from __future__ import annotations

import shlex

from observer.adapters.redis.held import RedisHeldActions
from observer.errors import StoreError
from observer.runtime.held_ops import Selection, held_actions

__all__ = ["HeldReader", "actions_command"]


def actions_command(
    verb: str, flow: str, redis_url: str, key_prefix: str, incident: str | None = None
) -> str:
    """`observer actions VERB FLOW [--incident ID] --redis-url URL --key-prefix P`."""
    argv = ["observer", "actions", verb, flow]
    if incident:
        argv += ["--incident", incident]
    argv += ["--redis-url", redis_url, "--key-prefix", key_prefix]
    return shlex.join(argv)


class HeldReader:
    """Held actions of one flow under one key prefix, per order: {key: [action name, ...]}."""

    def __init__(self, redis_url: str, key_prefix: str, flow: str) -> None:
        self.flow = flow
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self._port = RedisHeldActions(redis_url, key_prefix)
        self.error: str | None = None
        self.by_incident: dict[str, int] = {}  # of the last read: incident id -> held

    def read(self) -> dict[str, list[str]] | None:
        """What is held now (None: Redis did not answer; `error` says why)."""
        try:
            held = held_actions(self._port, Selection(self.flow))
        except StoreError as exc:
            self.error = str(exc)
            return None
        out: dict[str, list[str]] = {}
        by_incident: dict[str, int] = {}
        for h in held:
            out.setdefault(h.key, []).append(h.action)
            why = h.incident or h.reason
            by_incident[why] = by_incident.get(why, 0) + 1
        self.by_incident = by_incident
        return out

    def command(self, verb: str, incident: str | None = None) -> str:
        """The `observer actions` command line for this run (see `actions_command`)."""
        return actions_command(verb, self.flow, self.redis_url, self.key_prefix, incident)

    def close(self) -> None:
        self._port.close()
