# shellcheck shell=bash
# The schema registry of ops/stack, started on demand (sourced by ops/stack, not run):
#
#   registry   Apicurio Registry (in-memory storage) with its Confluent-compatible API at
#              http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7 (what OBSERVER_SCHEMA_REGISTRY_URL
#              and confluent-kafka's SchemaRegistryClient take)
#
# Assembled from Maven Central like Kafka: the application's distribution
# (io.apicurio:apicurio-registry-app:VERSION, classifier `all`, a tar.gz of the Quarkus app)
# is downloaded once with mvn into $STACK_CACHE and run with java. 3.0.9 is the newest 3.x
# that runs on Java 17 (3.1 and later are built for Java 21, which Debian 12 does not ship).
# Its schemas live in memory: a restart starts empty.

REGISTRY_VERSION="${OBSERVER_REGISTRY_VERSION:-3.0.9}"
REGISTRY_PORT="${OBSERVER_REGISTRY_PORT:-8081}"
REGISTRY_HEAP="${OBSERVER_REGISTRY_HEAP:-256m}"
REGISTRY_HOME="$STACK_CACHE/apicurio-registry-$REGISTRY_VERSION"
REGISTRY_LOG="$LOG_DIR/registry.log"
REGISTRY_PID_FILE="$PID_DIR/registry.pid"
REGISTRY_URL="http://$HOST:$REGISTRY_PORT/apis/ccompat/v7"

registry_jar() { find "$REGISTRY_HOME" -maxdepth 1 -name 'apicurio-registry-app-*-runner.jar' | head -n 1; }

# Downloads and unpacks the distribution once; later starts need no network.
ensure_registry_app() {
  if [[ -f $REGISTRY_HOME/.complete ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 ||
    die "Maven is needed once to download Apicurio Registry $REGISTRY_VERSION (apt-get install -y maven)."
  say "downloading Apicurio Registry $REGISTRY_VERSION from Maven Central into $REGISTRY_HOME (once)..."
  local tmp="$REGISTRY_HOME.tmp.$$" mvn_log artifact repo tarball
  artifact="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all"
  mvn_log="$(mktemp)"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # `get` without its dependencies: the project's parent POM is not on Maven Central for
  # every version, and the distribution needs none of its descriptor
  if ! mvn -q -B dependency:get -Dartifact="$artifact" -Dtransitive=false >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2
    rm -rf "$tmp" "$mvn_log"
    die "Maven could not resolve $artifact (see above)."
  fi
  repo="$(mvn -q -B help:evaluate -Dexpression=settings.localRepository -DforceStdout 2>/dev/null | tr -d '\033' | sed 's/\[[0-9;]*m//g')"
  rm -f "$mvn_log"
  tarball="$repo/io/apicurio/apicurio-registry-app/$REGISTRY_VERSION/apicurio-registry-app-$REGISTRY_VERSION-all.tar.gz"
  tar xzf "$tarball" -C "$tmp" || die "cannot unpack $tarball"
  touch "$tmp/.complete"
  rm -rf "$REGISTRY_HOME"
  mv "$tmp" "$REGISTRY_HOME"
  [[ -n "$(registry_jar)" ]] || die "no runner jar in $REGISTRY_HOME"
}

registry_answers() {
  "$PYTHON" - "$REGISTRY_URL/subjects" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

start_registry() {
  local pid
  if pid="$(our_pid registry)"; then
    say "registry already running (pid $pid, $REGISTRY_URL)"
    return 0
  fi
  rm -f "$REGISTRY_PID_FILE"
  require_java
  ensure_registry_app
  require_port_free "$REGISTRY_PORT" "schema registry" OBSERVER_REGISTRY_PORT
  mkdir -p "$LOG_DIR" "$PID_DIR"
  (
    cd "$REGISTRY_HOME" || exit 1
    exec "$JAVA" "-Xmx$REGISTRY_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
      -Dapicurio.registry.port="$REGISTRY_PORT" \
      -jar "$(registry_jar)" >"$REGISTRY_LOG" 2>&1 9>&- </dev/null
  ) &
  echo $! >"$REGISTRY_PID_FILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if registry_answers; then
      say "registry is up (pid $(<"$REGISTRY_PID_FILE"), Apicurio Registry $REGISTRY_VERSION, $REGISTRY_URL)"
      return 0
    fi
    if ! our_pid registry >/dev/null; then
      show_log_tail "$REGISTRY_LOG"
      die "the registry exited during start-up (log: $REGISTRY_LOG)"
    fi
    sleep 0.5
  done
  show_log_tail "$REGISTRY_LOG"
  if pid="$(our_pid registry)"; then stop_pid "$pid" registry 10; fi
  die "the registry did not answer at $REGISTRY_URL within ${START_TIMEOUT}s (log: $REGISTRY_LOG)"
}

stop_registry() {
  local pid
  if pid="$(our_pid registry)"; then
    say "stopping registry (pid $pid)..."
    stop_pid "$pid" registry "$STOP_TIMEOUT"
    say "registry stopped"
  fi
  rm -f "$REGISTRY_PID_FILE"
}

registry_status_line() {
  local pid answers
  if pid="$(our_pid registry)"; then
    if registry_answers; then answers=answering; else answers='NOT answering'; fi
    printf '%-12s up    pid %-7s %s  %s  apicurio %s\n' registry "$pid" "$REGISTRY_URL" "$answers" "$REGISTRY_VERSION"
    [[ $answers == answering ]]
  else
    printf '%-12s down  (on demand: ops/stack start registry; would use %s)\n' registry "$REGISTRY_URL"
    return 1
  fi
}
