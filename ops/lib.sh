# shellcheck shell=bash
# Shared set-up for ops/test and ops/demo (sourced, not run):
#   ensure_venv       .venv with the project installed editable with its dev and demo extras
#                     (pip install -e '.[dev,demo]': the tests run the demo, ops/demo needs its tools)
#   ensure_stack      ops/stack start for whatever OBSERVER_BOOTSTRAP_SERVERS / OBSERVER_REDIS_URL
#                     do not already point elsewhere
#   stop_started_stack  stops only the services ensure_stack had to start

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OBSERVER_VENV:-$REPO_ROOT/.venv}"
VENV_PY="$VENV/bin/python"
BOOTSTRAP_PYTHON="${OBSERVER_BOOTSTRAP_PYTHON:-python3}"
STACK="$REPO_ROOT/ops/stack"

# Services ensure_stack found down and started (stop_started_stack stops exactly these).
STARTED_SERVICES=()

log() { printf '\n==> %s\n' "$*"; }
fail() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# Creates the venv when missing and (re)installs the project when pyproject.toml changed since the
# last install or the package is not importable. Serialised with a lock: parallel runs share .venv.
ensure_venv() {
  command -v "$BOOTSTRAP_PYTHON" >/dev/null 2>&1 ||
    fail "no '$BOOTSTRAP_PYTHON' on PATH: Python 3.11+ is needed (or set OBSERVER_BOOTSTRAP_PYTHON)"
  "$BOOTSTRAP_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "$("$BOOTSTRAP_PYTHON" --version 2>&1) is too old: Python 3.11+ is needed (set OBSERVER_BOOTSTRAP_PYTHON)"

  local lock
  lock="${TMPDIR:-/tmp}/observer-venv-$(printf '%s' "$VENV" | cksum | cut -d' ' -f1).lock"
  exec 8>"$lock"
  flock -w 600 8 || fail "another install into $VENV holds $lock for over 600s"

  if [[ ! -x $VENV_PY ]]; then
    log "creating virtualenv $VENV"
    "$BOOTSTRAP_PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.observer-installed" want
  want="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/setup.py" | cksum | cut -d' ' -f1) $REPO_ROOT"
  if [[ -f $stamp && "$(<"$stamp")" == "$want" && -x $VENV/bin/observer ]] &&
    (cd / && "$VENV_PY" -c 'import observer, demo') >/dev/null 2>&1; then
    echo "virtualenv $VENV is up to date"
    # the compiled hot path (setup.py) is built again when a source of it changed since: what
    # is tested is what ships (observer/build.py would run the sources meanwhile)
    if (cd / && "$VENV_PY" -c 'import sys; from observer import build; sys.exit(build.info().stale)') >/dev/null 2>&1; then
      :
    else
      log "the hot path's sources changed since they were compiled: compiling them again (~90s)"
      (cd "$REPO_ROOT" && "$VENV_PY" -m pip install --disable-pip-version-check -q --no-deps -e .) ||
        fail "pip install --no-deps -e . failed"
    fi
  else
    log "installing the project, its dev tools and the demo's into $VENV (pip install -e '.[dev,demo]')"
    local out
    out="$(mktemp)"
    if ! (cd "$REPO_ROOT" && "$VENV_PY" -m pip install --disable-pip-version-check -q -e '.[dev,demo]') >"$out" 2>&1; then
      tail -n 40 "$out" >&2
      rm -f "$out"
      fail "pip install -e '.[dev,demo]' failed (output above)"
    fi
    rm -f "$out"
    printf '%s\n' "$want" >"$stamp"
  fi
  exec 8>&-
  export OBSERVER_PYTHON="$VENV_PY" # ops/stack's readiness probe uses the venv's confluent_kafka
}

ensure_stack() {
  local services=() service
  if [[ -n ${OBSERVER_BOOTSTRAP_SERVERS:-} ]]; then
    echo "Kafka: using OBSERVER_BOOTSTRAP_SERVERS=$OBSERVER_BOOTSTRAP_SERVERS (not starting one)"
  else
    services+=(kafka)
  fi
  if [[ -n ${OBSERVER_REDIS_URL:-} ]]; then
    echo "Redis: using OBSERVER_REDIS_URL (not starting one)"
  else
    services+=(redis)
  fi
  for service in "${services[@]}"; do
    if ! "$STACK" status "$service" >/dev/null 2>&1; then STARTED_SERVICES+=("$service"); fi
    "$STACK" start "$service"
  done
}

stop_started_stack() {
  local service
  for service in "${STARTED_SERVICES[@]}"; do
    "$STACK" stop "$service" || true
  done
}
