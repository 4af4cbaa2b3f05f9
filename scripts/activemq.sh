#!/usr/bin/env bash
# Runs ActiveMQ Classic (Debian's `activemq` package) on loopback for tests and demos.
#
#   scripts/activemq.sh start|stop|restart|status|kill
#
# Environment (defaults in brackets):
#   ACTIVEMQ_BASE      instance folder: config, data, logs, pid   [var/activemq]
#   STOMP_PORT         STOMP listener on 127.0.0.1                [61613]
#   OPENWIRE_PORT      OpenWire listener on 127.0.0.1 (JMS clients) [61616]
#   ACTIVEMQ_HEAP      maximum Java heap                          [256m]
#   STOMP_SSL_PORT     also a stomp+ssl listener on 127.0.0.1      [none]
#   SSL_KEYSTORE       its certificate and key, a PKCS12 file (with STOMP_SSL_PORT)
#   SSL_KEYSTORE_PASSWORD  the keystore's password                [changeit]
#   START_TIMEOUT      seconds to wait for the STOMP port          [90]
#
# Debian's packaged instance listens on OpenWire only, sleeps in its init script and keeps a
# shell wrapper in its pidfile, so this script writes a minimal instance and runs java itself.
# A broker left over from an earlier run (same instance folder) is stopped first; a port taken
# by something else is an error that says so.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
BASE=${ACTIVEMQ_BASE:-$here/var/activemq}
STOMP_PORT=${STOMP_PORT:-61613}
OPENWIRE_PORT=${OPENWIRE_PORT:-61616}
HEAP=${ACTIVEMQ_HEAP:-256m}
STOMP_SSL_PORT=${STOMP_SSL_PORT:-}
SSL_KEYSTORE=${SSL_KEYSTORE:-}
SSL_KEYSTORE_PASSWORD=${SSL_KEYSTORE_PASSWORD:-changeit}
START_TIMEOUT=${START_TIMEOUT:-90}
HOME_DIR=/usr/share/activemq
PIDFILE=$BASE/activemq.pid

log() { printf 'activemq: %s\n' "$*" >&2; }

port_open() {  # true when something accepts connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {  # a live (not zombie) process with that pid
  local pid=$1 state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != "Z" ]
}

ours() {  # the pid in the pidfile, if that process is our java
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  alive "$pid" && grep -q "activemq.base=$BASE" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

install() {
  if [ ! -f "$HOME_DIR/bin/activemq.jar" ] || ! command -v java >/dev/null 2>&1; then
    log "installing Debian's activemq package"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends activemq >/dev/null
  fi
}

write_instance() {
  mkdir -p "$BASE/conf" "$BASE/data" "$BASE/tmp" "$BASE/log"
  local ssl_context="" ssl_connector=""
  if [ -n "$STOMP_SSL_PORT" ]; then
    [ -f "$SSL_KEYSTORE" ] || { log "STOMP_SSL_PORT needs SSL_KEYSTORE (a PKCS12 file)"; exit 1; }
    ssl_context="<sslContext><sslContext keyStore=\"file:$SSL_KEYSTORE\" keyStoreType=\"pkcs12\" keyStorePassword=\"$SSL_KEYSTORE_PASSWORD\"/></sslContext>"
    ssl_connector="<transportConnector name=\"stomp+ssl\" uri=\"stomp+ssl://127.0.0.1:${STOMP_SSL_PORT}?transport.closeAsync=false\"/>"
  fi
  cat > "$BASE/conf/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="smile-gateway-test"
          useJmx="false" persistent="true" dataDirectory="$BASE/data" schedulerSupport="false"
          advisorySupport="false">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- No producer flow control: a queue nobody reads (a test's, a benchmark's) must
               not block senders; persistent messages page to the store instead.
               Invalid or poison messages: one dead-letter queue per destination. -->
          <policyEntry queue="&gt;" producerFlowControl="false" memoryLimit="16mb">
            <deadLetterStrategy>
              <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"/>
            </deadLetterStrategy>
          </policyEntry>
          <policyEntry topic="&gt;" producerFlowControl="false" memoryLimit="16mb"/>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory="$BASE/data/kahadb"/>
    </persistenceAdapter>
    ${ssl_context}
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="128 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${STOMP_PORT}?transport.closeAsync=false"/>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:${OPENWIRE_PORT}"/>
      ${ssl_connector}
    </transportConnectors>
  </broker>
</beans>
XML
  cat > "$BASE/conf/log4j.properties" <<PROPS
log4j.rootLogger=WARN, logfile
log4j.logger.org.apache.activemq=INFO
log4j.appender.logfile=org.apache.log4j.FileAppender
log4j.appender.logfile.file=$BASE/log/activemq.log
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
PROPS
}

leftovers() {  # brokers this script started elsewhere (another checkout) on the same STOMP port
  local pid
  for pid in $(pgrep -f -- "-Dsmile.gateway.stomp.port=$STOMP_PORT " 2>/dev/null); do
    alive "$pid" && echo "$pid"
  done
}

terminate() {  # SIGTERM, then SIGKILL after 10 s
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid did not stop in 10 s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  fi
}

stop() {
  local pid
  pid=$(ours) || { rm -f "$PIDFILE"; return 0; }
  terminate "$pid"
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

start() {
  install
  stop  # a broker left over from an earlier run of this instance
  for pid in $(leftovers); do
    log "stopping a broker left over on port $STOMP_PORT (pid $pid)"
    terminate "$pid"
  done
  for port in "$STOMP_PORT" "$OPENWIRE_PORT"; do
    if port_open "$port"; then
      log "port $port on 127.0.0.1 is taken by another program; set STOMP_PORT/OPENWIRE_PORT"
      exit 1
    fi
  done
  write_instance
  java -Xms64m -Xmx"$HEAP" -Dsmile.gateway.stomp.port="$STOMP_PORT" -Djava.awt.headless=true -Djava.io.tmpdir="$BASE/tmp" \
    -Dactivemq.classpath="$BASE/conf" -Dactivemq.home="$HOME_DIR" \
    -Dactivemq.base="$BASE" -Dactivemq.conf="$BASE/conf" -Dactivemq.data="$BASE/data" \
    -Dlog4j.configuration="file:$BASE/conf/log4j.properties" \
    -jar "$HOME_DIR/bin/activemq.jar" start "xbean:file:$BASE/conf/activemq.xml" \
    >"$BASE/log/stdout.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" > "$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$STOMP_PORT"; do
    if ! alive "$pid"; then
      log "java exited before listening; last lines of $BASE/log:"
      tail -n 30 "$BASE/log/stdout.log" "$BASE/log/activemq.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "STOMP port $STOMP_PORT not open after ${START_TIMEOUT}s"
      stop
      exit 1
    fi
    sleep 0.1
  done
  log "running: pid $pid, STOMP 127.0.0.1:$STOMP_PORT, OpenWire 127.0.0.1:$OPENWIRE_PORT, base $BASE"
}

status() {
  local pid
  if pid=$(ours) && port_open "$STOMP_PORT"; then
    echo "running: pid $pid, STOMP 127.0.0.1:$STOMP_PORT"
  else
    echo "not running"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  kill)  # SIGKILL, for crash tests
    if pid=$(ours); then kill -KILL "$pid"; for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done; rm -f "$PIDFILE"; log "killed (pid $pid)"; fi ;;
  pid) ours ;;
  *) echo "usage: $0 start|stop|restart|status|kill|pid" >&2; exit 2 ;;
esac
