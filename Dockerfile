# The observer image used by docker-compose.yml:  docker build -t choreography-observer .
# tests/test_image.py replays these COPY/RUN steps (a clean, non-editable install and
# `observer validate` of the copied flows from another directory): no Docker engine needed.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# README.md* : the build reads README.md (pyproject's readme) when it is there.
COPY pyproject.toml setup.py README.md* ./
COPY observer ./observer
# The install compiles the hot path with mypyc (setup.py): gcc is there for the build only,
# removed in the same layer. `observer --version` in the image says which build runs.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && pip install . && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 observer
# Flows name their Avro schemas relative to the flow file (../schemas/... from /flows), so the
# schemas sit next to the flows: /flows and /schemas.
COPY flows /flows
COPY schemas /schemas

USER observer
EXPOSE 8000
# The ops API listens on 127.0.0.1 unless OBSERVER_HTTP_HOST says otherwise: docker-compose.yml
# sets 0.0.0.0, since a published port reaches the container's own interface.
CMD ["observer", "run", "/flows"]
