"""Choreography Observer: watches a choreographed process on Kafka and steps in when it goes wrong."""

from observer import build

__version__ = "0.1.0"

build.info()  # before any hot-path module is imported: compiled, or their sources (build.py)
