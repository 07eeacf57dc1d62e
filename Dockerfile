# The observer image used by docker-compose.yml:  docker build -t choreography-observer .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# README.md* : the build reads README.md (pyproject's readme) when it is there.
COPY pyproject.toml README.md* ./
COPY observer ./observer
RUN pip install . && useradd --system --uid 10001 observer
COPY flows /flows

USER observer
EXPOSE 8000
CMD ["observer", "run", "/flows"]
