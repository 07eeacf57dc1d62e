"""The web console (issue 17, docs/console.md): the flow drawn from its compiled definition,
live numbers from state the group shares, instances as timelines. Pure layout and numbers
here; the routes in `observer/http/console.py`, Redis and Kafka reads in the adapters."""
