"""Choreography Observer: watches a choreographed process on Kafka and steps in when it goes wrong."""

__version__ = "0.1.0"
