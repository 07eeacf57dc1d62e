"""Every limit on what a flow file, a template or an event may hold, in one place.

Flow files and event data come from people and programs the observer does not control. These
bounds are what keeps a hostile or mistaken one from exhausting memory or CPU, or from holding
a number the observer cannot store; docs/flow-language.md lists them for users.
"""

from __future__ import annotations

__all__ = [
    "MAX_ACTIONS_COUNT",
    "MAX_CAPTURE_BYTES",
    "MAX_DURATION_MS",
    "MAX_EARLY_EVENTS",
    "MAX_EARLY_EVENT_BYTES",
    "MAX_EVENT_ID_BYTES",
    "MAX_EVENT_INT",
    "MAX_FLOW_FILE_BYTES",
    "MAX_FORMAT_WIDTH",
    "MAX_INCIDENT_THRESHOLD",
    "MAX_JSON_INDENT",
    "MAX_KEY_BYTES",
    "MAX_LOOP_ITERATIONS",
    "MAX_RENDERED_SIZE",
    "MAX_RENDER_WORK",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_TEMPLATE_INT",
    "MAX_VERSION",
    "MAX_YAML_DEPTH",
    "MAX_YAML_INT",
    "MAX_YAML_NODES",
    "MIN_EVENT_INT",
    "MIN_TEMPLATE_INT",
    "MIN_YAML_INT",
]

# -- flow files --------------------------------------------------------------------------------
MAX_FLOW_FILE_BYTES = 256 * 1024
"""A flow file is read up to this size (ruamel parses about 100 KB/s with line numbers)."""

MAX_YAML_NODES = 100_000
"""Mappings, sequences and scalars of one file, counted with every alias expanded: a few
hundred bytes of nested aliases (a "billion laughs") would otherwise expand to gigabytes."""

MAX_YAML_DEPTH = 64
"""How deeply mappings and sequences may nest in a flow file."""

MIN_YAML_INT, MAX_YAML_INT = -(2**63), 2**63 - 1
"""An integer written in a flow file fits in 64 bits (signed)."""

MAX_VERSION = 2**31 - 1
"""`version:` is 1 to this: it is stored with every instance and shown everywhere."""

MAX_DURATION_MS = 36_500 * 86_400_000
"""A duration (`within`, `warn`, `buffer`, `retain`, `expire`, `sla`) is at most 100 years
(36500d): event times end at year 9000, and a time plus a few durations must still be a date
ISO-8601 can write (up to year 9999) and an integer of milliseconds that fits in 64 bits."""

MAX_INCIDENT_THRESHOLD = 10_000
"""`guardrails.incident.threshold`: the times of the last deviations of each kind and step are
kept with the flow's guardrail state until the threshold is reached."""

MAX_ACTIONS_COUNT = 10_000
"""`guardrails.max_actions.count`: the times of the actions published in the last interval are
kept with the flow's guardrail state."""

# -- templates ---------------------------------------------------------------------------------
MAX_TEMPLATE_CHARS = 10_000
"""The source of one template string."""

MAX_TEMPLATE_DEPTH = 32
"""How deeply expressions and statements of one template may nest."""

MIN_TEMPLATE_INT, MAX_TEMPLATE_INT = -(2**63), 2**63 - 1
"""Integer arithmetic in a template stays within 64 bits (signed)."""

MAX_RENDERED_SIZE = 1_000_000
"""Any value a template builds (a string, a list, the rendered text) measures at most this many
characters; a list or mapping measures the sum of its items (every reference counted)."""

MAX_RENDER_WORK = 10 * MAX_RENDERED_SIZE
"""Work of one rendering: characters and items produced or read by operators, filters and
method calls, plus loop iterations. Deterministic, so a template never fails only on a slow
machine."""

MAX_LOOP_ITERATIONS = 10_000
"""Iterations of every `{% for %}` loop of one rendering together."""

MAX_FORMAT_WIDTH = 1_000
"""A width or precision in `format` and `%`, an `indent`, and the strings `wordwrap` and
`urlize` insert."""

MAX_JSON_INDENT = 16
"""`tojson(indent)`: every line of the output is indented by up to this times its depth."""

# -- event data ---------------------------------------------------------------------------------
MIN_EVENT_INT, MAX_EVENT_INT = -(2**63), 2**63 - 1
"""An integer an event's flow reads (captured values) must fit in 64 bits: the state store
keeps 64-bit integers. Keys and ids beyond it are kept exact, as text."""

MAX_KEY_BYTES = 4096
"""A correlation key (UTF-8): it is written twice in every alert and outcome record and names
the instance's keys in the state store. A longer one is bad input (dead-lettered)."""

MAX_EVENT_ID_BYTES = 4096
"""An event id (UTF-8): early events keep it, and record ids are made of it. A longer one is bad
input (dead-lettered)."""

MAX_CAPTURE_BYTES = 64 * 1024
"""What one event's captured values may hold together, as JSON: they are kept in the instance's
state for its life. A value that does not fit is kept as a marker templates cannot use (the step
is still observed; an action that needs the value is an action error)."""

MAX_EARLY_EVENTS = 1000
"""Early events kept for one (flow, key) before its instance starts; more are dropped."""

MAX_EARLY_EVENT_BYTES = 4 * 1024 * 1024
"""What the early events kept for one (flow, key) may hold together (ids, types and captured
values); more are dropped."""
