# shellcheck shell=bash
# The secured services of ops/stack, started on demand (sourced by ops/stack, not run):
#
#   secure-kafka   a second, separate KRaft broker whose only client listener is SASL_SSL
#                  (SCRAM-SHA-512 over TLS); users `admin` (inter-broker) and `observer`
#   secure-redis   a second redis-server with TLS only (`port 0`, `tls-port`), client
#                  certificates required, the `default` user off and an ACL user `observer`
#
# Certificates (a CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
# second CA that signs nothing, for tests of an untrusted certificate) and passwords are made
# with openssl when the first secured service starts, in $SECURE_DIR. What a
# client needs is written to $SECURE_DIR/client.env (see docs/stack.md). The secured broker's
# storage is formatted afresh on every start (its SCRAM users are created by the format).

SECURE_KAFKA_PORT="${OBSERVER_SECURE_KAFKA_PORT:-9192}"
SECURE_KAFKA_CONTROLLER_PORT="${OBSERVER_SECURE_KAFKA_CONTROLLER_PORT:-9193}"
SECURE_REDIS_PORT="${OBSERVER_SECURE_REDIS_PORT:-6380}"

SECURE_DIR="$STACK_DIR/secure"
SECURE_KAFKA_STATE="$STACK_DIR/secure-kafka"
SECURE_KAFKA_DATA="$SECURE_KAFKA_STATE/data"
SECURE_KAFKA_CONFIG="$SECURE_KAFKA_STATE/server.properties"
SECURE_REDIS_STATE="$STACK_DIR/secure-redis"
SECURE_REDIS_CONFIG="$SECURE_REDIS_STATE/redis.conf"
SECURE_KAFKA_LOG="$LOG_DIR/secure-kafka.log"
SECURE_REDIS_LOG="$LOG_DIR/secure-redis.log"
SECURE_KAFKA_PID_FILE="$PID_DIR/secure-kafka.pid"
SECURE_REDIS_PID_FILE="$PID_DIR/secure-redis.pid"
SECURE_ENV="$SECURE_DIR/client.env"

# ---------------------------------------------------------------------------------------------
# certificates and secrets

secret() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }

# Signs a certificate for $1 (file stem) with the CA; $2 = extendedKeyUsage, $3 = subject CN.
sign_cert() {
  local stem=$1 usage=$2 cn=$3 ext
  ext="$(mktemp)"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' \
    "$usage" >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$SECURE_DIR/$stem.key" \
    -out "$SECURE_DIR/$stem.csr" -subj "/CN=$cn" >/dev/null 2>&1 &&
    openssl x509 -req -in "$SECURE_DIR/$stem.csr" -CA "$SECURE_DIR/ca.pem" \
      -CAkey "$SECURE_DIR/ca.key" -CAcreateserial -days 30 -sha256 -extfile "$ext" \
      -out "$SECURE_DIR/$stem.pem" >/dev/null 2>&1
  local rc=$?
  rm -f "$ext" "$SECURE_DIR/$stem.csr"
  return "$rc"
}

# Makes a fresh CA, server and client certificates, the broker's PKCS12 keystore and the
# passwords, unless a secured service is running (it would stop trusting new clients).
ensure_secure_material() {
  if our_pid secure-kafka >/dev/null || our_pid secure-redis >/dev/null; then
    [[ -f $SECURE_ENV ]] && return 0
  fi
  command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the test certificates (apt-get install -y openssl)"
  rm -rf "$SECURE_DIR"
  mkdir -p "$SECURE_DIR"
  chmod 700 "$SECURE_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 -subj "/CN=observer ops-stack test CA" \
    -keyout "$SECURE_DIR/ca.key" -out "$SECURE_DIR/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || die "openssl could not make the test CA in $SECURE_DIR"
  # A second CA that signs nothing: a client that trusts only it sees an untrusted certificate.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 -subj "/CN=observer ops-stack other CA" \
    -keyout "$SECURE_DIR/other-ca.key" -out "$SECURE_DIR/other-ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || die "openssl could not make the second test CA in $SECURE_DIR"
  sign_cert server serverAuth localhost || die "openssl could not make the server certificate"
  sign_cert client clientAuth observer || die "openssl could not make the client certificate"
  local store_pass admin_pass observer_pass redis_pass
  store_pass="$(secret)"
  admin_pass="$(secret)"
  observer_pass="$(secret)"
  redis_pass="$(secret)"
  openssl pkcs12 -export -in "$SECURE_DIR/server.pem" -inkey "$SECURE_DIR/server.key" \
    -certfile "$SECURE_DIR/ca.pem" -name broker -out "$SECURE_DIR/server.p12" \
    -passout "pass:$store_pass" >/dev/null 2>&1 || die "openssl could not make the broker keystore"
  cat >"$SECURE_DIR/broker.secrets" <<EOF
STORE_PASS=$store_pass
ADMIN_PASS=$admin_pass
EOF
  local ca="$SECURE_DIR/ca.pem" cert="$SECURE_DIR/client.pem" key="$SECURE_DIR/client.key"
  # Values single-quoted: the file can be sourced by a shell (`set -a; . client.env`).
  cat >"$SECURE_ENV" <<EOF
# Made by ops/stack for the secured services (secure-kafka, secure-redis); see docs/stack.md.
SECURE_CA='$ca'
SECURE_OTHER_CA='$SECURE_DIR/other-ca.pem'
SECURE_KAFKA_BOOTSTRAP='$HOST:$SECURE_KAFKA_PORT'
SECURE_KAFKA_USER='observer'
SECURE_KAFKA_PASSWORD='$observer_pass'
SECURE_KAFKA_ADMIN_USER='admin'
SECURE_KAFKA_ADMIN_PASSWORD='$admin_pass'
SECURE_REDIS_USER='observer'
SECURE_REDIS_PASSWORD='$redis_pass'
SECURE_REDIS_CERT='$cert'
SECURE_REDIS_KEY='$key'
SECURE_REDIS_URL='rediss://observer:$redis_pass@$HOST:$SECURE_REDIS_PORT/0?ssl_ca_certs=$ca&ssl_certfile=$cert&ssl_keyfile=$key'
EOF
  chmod 600 "$SECURE_DIR"/*.key "$SECURE_DIR/broker.secrets" "$SECURE_ENV" "$SECURE_DIR/server.p12"
  say "made a test CA, server and client certificates and passwords in $SECURE_DIR"
}

# Prints the value of NAME from a KEY=VALUE file (quotes removed).
secure_value() { sed -n "s/^$2='\{0,1\}\([^']*\)'\{0,1\}\$/\1/p" "$1" | head -n 1; }

# ---------------------------------------------------------------------------------------------
# secure-kafka: SASL_SSL (SCRAM-SHA-512 over TLS)

write_secure_kafka_config() {
  local store_pass admin_pass
  store_pass="$(secure_value "$SECURE_DIR/broker.secrets" STORE_PASS)"
  admin_pass="$(secure_value "$SECURE_DIR/broker.secrets" ADMIN_PASS)"
  mkdir -p "$SECURE_KAFKA_STATE"
  cat >"$SECURE_KAFKA_CONFIG" <<EOF
# Generated by ops/stack on every start of secure-kafka; edit ops/stack-secure.sh instead.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$SECURE_KAFKA_CONTROLLER_PORT
listeners=SASL_SSL://$HOST:$SECURE_KAFKA_PORT,CONTROLLER://$HOST:$SECURE_KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$SECURE_KAFKA_PORT,CONTROLLER://$HOST:$SECURE_KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$SECURE_KAFKA_DATA

sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pass";
ssl.keystore.type=PKCS12
ssl.keystore.location=$SECURE_DIR/server.p12
ssl.keystore.password=$store_pass
ssl.key.password=$store_pass
ssl.truststore.type=PEM
ssl.truststore.location=$SECURE_DIR/ca.pem
ssl.client.auth=none

num.partitions=4
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
num.network.threads=2
num.io.threads=2
log.retention.hours=4
EOF
  chmod 600 "$SECURE_KAFKA_CONFIG"
}

# A fresh storage on every start: the format also creates the SCRAM users.
format_secure_kafka() {
  local admin_pass observer_pass cluster_id out
  admin_pass="$(secure_value "$SECURE_DIR/broker.secrets" ADMIN_PASS)"
  observer_pass="$(secure_value "$SECURE_ENV" SECURE_KAFKA_PASSWORD)"
  rm -rf "$SECURE_KAFKA_DATA"
  mkdir -p "$SECURE_KAFKA_DATA"
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  if ! out="$("$JAVA" -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIB/*" \
    kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$SECURE_KAFKA_CONFIG" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_pass]" \
    --add-scram "SCRAM-SHA-512=[name=observer,password=$observer_pass]" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 30 >&2
    die "formatting the secured broker's storage in $SECURE_KAFKA_DATA failed (output above)"
  fi
}

# Whether the secured broker answers a metadata request as `admin` over SASL_SSL.
secure_kafka_answers() {
  local timeout=${1:-5}
  "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1 || return 1
  "$PYTHON" - "$HOST:$SECURE_KAFKA_PORT" "$timeout" "$SECURE_DIR/ca.pem" \
    "$(secure_value "$SECURE_DIR/broker.secrets" ADMIN_PASS)" >/dev/null 2>&1 <<'EOF'
import sys

from confluent_kafka.admin import AdminClient

bootstrap, timeout, ca, password = sys.argv[1:5]
admin = AdminClient({
    "bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin", "sasl.password": password,
    "ssl.ca.location": ca, "log_level": 0,
})
sys.exit(0 if admin.list_topics(timeout=float(timeout)).brokers else 1)
EOF
}

start_secure_kafka() {
  local pid
  if pid="$(our_pid secure-kafka)"; then
    say "secure-kafka already running (pid $pid, SASL_SSL on $HOST:$SECURE_KAFKA_PORT)"
    return 0
  fi
  rm -f "$SECURE_KAFKA_PID_FILE"
  require_java
  "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1 ||
    die "the readiness probe of secure-kafka needs confluent_kafka in $PYTHON (set OBSERVER_PYTHON=.venv/bin/python)"
  require_port_free "$SECURE_KAFKA_PORT" "secured Kafka broker" OBSERVER_SECURE_KAFKA_PORT
  require_port_free "$SECURE_KAFKA_CONTROLLER_PORT" "secured Kafka controller" OBSERVER_SECURE_KAFKA_CONTROLLER_PORT
  ensure_kafka_jars
  ensure_secure_material
  write_secure_kafka_config
  format_secure_kafka
  mkdir -p "$LOG_DIR" "$PID_DIR"
  [[ -f $SECURE_KAFKA_LOG ]] && mv -f "$SECURE_KAFKA_LOG" "$SECURE_KAFKA_LOG.1"
  setsid "$JAVA" -Xms96m -Xmx384m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIB/*" \
    kafka.Kafka "$SECURE_KAFKA_CONFIG" >"$SECURE_KAFKA_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$SECURE_KAFKA_PID_FILE"
  say "secure-kafka starting (pid $pid, SASL_SSL SCRAM-SHA-512 on $HOST:$SECURE_KAFKA_PORT, controller $SECURE_KAFKA_CONTROLLER_PORT)"
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$SECURE_KAFKA_PID_FILE"
      show_log_tail "$SECURE_KAFKA_LOG"
      die "secure-kafka exited during start-up (log: $SECURE_KAFKA_LOG)"
    fi
    if port_open "$SECURE_KAFKA_PORT" && secure_kafka_answers 5; then
      say "secure-kafka is up; client settings in $SECURE_ENV"
      return 0
    fi
    sleep 0.5
  done
  show_log_tail "$SECURE_KAFKA_LOG"
  stop_pid "$pid" secure-kafka 10
  rm -f "$SECURE_KAFKA_PID_FILE"
  die "secure-kafka did not answer on $HOST:$SECURE_KAFKA_PORT within ${START_TIMEOUT}s (stopped it; log: $SECURE_KAFKA_LOG)"
}

stop_secure_kafka() {
  local pid
  if pid="$(our_pid secure-kafka)"; then
    say "stopping secure-kafka (pid $pid)..."
    stop_pid "$pid" secure-kafka "$STOP_TIMEOUT"
    say "secure-kafka stopped"
  fi
  rm -f "$SECURE_KAFKA_PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# secure-redis: TLS only, client certificates, an ACL user

secure_redis_cli() {
  redis-cli -h "$HOST" -p "$SECURE_REDIS_PORT" --tls --cacert "$SECURE_DIR/ca.pem" \
    --cert "$SECURE_DIR/client.pem" --key "$SECURE_DIR/client.key" \
    --user observer --pass "$(secure_value "$SECURE_ENV" SECURE_REDIS_PASSWORD)" --no-auth-warning "$@"
}

secure_redis_answers() { [[ "$(secure_redis_cli ping 2>/dev/null)" == PONG ]]; }

start_secure_redis() {
  local pid
  if pid="$(our_pid secure-redis)"; then
    say "secure-redis already running (pid $pid, TLS on $HOST:$SECURE_REDIS_PORT)"
    return 0
  fi
  rm -f "$SECURE_REDIS_PID_FILE"
  ensure_redis_installed
  require_port_free "$SECURE_REDIS_PORT" "secured Redis" OBSERVER_SECURE_REDIS_PORT
  ensure_secure_material
  mkdir -p "$SECURE_REDIS_STATE" "$LOG_DIR" "$PID_DIR"
  rm -rf "${SECURE_REDIS_STATE:?}/appendonlydir"
  local password
  password="$(secure_value "$SECURE_ENV" SECURE_REDIS_PASSWORD)"
  # The ACL user is what a managed Redis gives an application: every key and channel, every
  # command but the dangerous ones (CONFIG, FLUSHALL, DEBUG, ...).
  cat >"$SECURE_REDIS_CONFIG" <<EOF
# Generated by ops/stack on every start of secure-redis; edit ops/stack-secure.sh instead.
bind $HOST
port 0
tls-port $SECURE_REDIS_PORT
tls-cert-file $SECURE_DIR/server.pem
tls-key-file $SECURE_DIR/server.key
tls-ca-cert-file $SECURE_DIR/ca.pem
tls-auth-clients yes
user default off
user observer on >$password ~* &* +@all -@dangerous +info
protected-mode yes
daemonize yes
supervised no
pidfile $SECURE_REDIS_PID_FILE
logfile $SECURE_REDIS_LOG
dir $SECURE_REDIS_STATE
appendonly yes
appendfsync everysec
appenddirname appendonlydir
save ""
hash-max-listpack-value 1024
hash-max-listpack-entries 512
EOF
  chmod 600 "$SECURE_REDIS_CONFIG"
  local out
  if ! out="$(redis-server "$SECURE_REDIS_CONFIG" 2>&1 9>&-)"; then
    printf '%s\n' "$out" >&2
    show_log_tail "$SECURE_REDIS_LOG"
    die "redis-server (secure-redis) failed to start"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if secure_redis_answers; then
      pid="$(our_pid secure-redis)" || pid='?'
      say "secure-redis is up (pid $pid, TLS on $HOST:$SECURE_REDIS_PORT, ACL user observer); client settings in $SECURE_ENV"
      return 0
    fi
    if [[ -f $SECURE_REDIS_PID_FILE ]] && ! our_pid secure-redis >/dev/null; then
      show_log_tail "$SECURE_REDIS_LOG"
      die "secure-redis exited during start-up (log: $SECURE_REDIS_LOG)"
    fi
    sleep 0.2
  done
  show_log_tail "$SECURE_REDIS_LOG"
  if pid="$(our_pid secure-redis)"; then stop_pid "$pid" secure-redis 10; fi
  die "secure-redis did not answer PING on $HOST:$SECURE_REDIS_PORT within ${START_TIMEOUT}s (log: $SECURE_REDIS_LOG)"
}

stop_secure_redis() {
  local pid
  if pid="$(our_pid secure-redis)"; then
    say "stopping secure-redis (pid $pid)..."
    stop_pid "$pid" secure-redis "$STOP_TIMEOUT"
    say "secure-redis stopped"
  fi
  rm -f "$SECURE_REDIS_PID_FILE"
}

secure_status_line() {
  local service=$1 pid port answers
  case $service in
    secure-kafka) port=$SECURE_KAFKA_PORT ;;
    secure-redis) port=$SECURE_REDIS_PORT ;;
  esac
  if pid="$(our_pid "$service")"; then
    if [[ $service == secure-kafka ]]; then
      if secure_kafka_answers 5; then answers=answering; else answers='NOT answering'; fi
      printf '%-12s up    pid %-7s %s:%s SASL_SSL SCRAM-SHA-512 (controller %s)  %s\n' \
        "$service" "$pid" "$HOST" "$port" "$SECURE_KAFKA_CONTROLLER_PORT" "$answers"
    else
      if secure_redis_answers; then answers=answering; else answers='NOT answering'; fi
      printf '%-12s up    pid %-7s %s:%s TLS, ACL user observer  %s\n' "$service" "$pid" "$HOST" "$port" "$answers"
    fi
    [[ $answers == answering ]]
  else
    printf '%-12s down  (on demand: ops/stack start %s; would use %s:%s)\n' "$service" "$service" "$HOST" "$port"
    return 1
  fi
}
