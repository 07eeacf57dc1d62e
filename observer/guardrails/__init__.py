"""Guardrails (contract §7): incidents, the action rate limit, held actions. Pure: the
decisions (`gate.py`), how an engine call's effects are split into what publishes now and what
waits for them (`split.py`), and the book `observer replay` keeps (`book.py`)."""
