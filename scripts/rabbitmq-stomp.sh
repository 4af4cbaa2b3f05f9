#!/usr/bin/env bash
# The second broker of the compatibility tests: the machine's own RabbitMQ, with its STOMP
# plugin listening on loopback at RABBIT_STOMP_PORT (default 61623, so that it never takes
# ActiveMQ's 61613). RabbitMQ itself is not installed or started here: it is a service of the
# machine (README, "Development").
#
# The plugin's application is started on the running node, not enabled: nothing is written to
# RabbitMQ's configuration, so a restarted RabbitMQ comes back as it was (a persistently
# enabled plugin would then listen on 61613, ActiveMQ's port). `stop` also deletes the queues
# the tests made (their names start with "test.").
#
#   scripts/rabbitmq-stomp.sh start|stop|status
set -euo pipefail

PORT="${RABBIT_STOMP_PORT:-61623}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

need() {
  if ! command -v rabbitmqctl >/dev/null 2>&1; then
    echo "rabbitmq-stomp: rabbitmqctl not found: RabbitMQ is not installed on this machine" >&2
    exit 1
  fi
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "rabbitmq-stomp: RabbitMQ is not running (start it: rabbitmq-server -detached)" >&2
    exit 1
  fi
}

case "${1:-}" in
  start)
    if listening; then echo "rabbitmq-stomp: listening on 127.0.0.1:$PORT"; exit 0; fi
    need
    rabbitmqctl -q eval "application:load(rabbitmq_stomp),
      application:set_env(rabbitmq_stomp, tcp_listeners, [{\"127.0.0.1\", $PORT}]),
      application:ensure_all_started(rabbitmq_stomp)." >/dev/null
    for _ in $(seq 1 100); do
      if listening; then echo "rabbitmq-stomp: listening on 127.0.0.1:$PORT"; exit 0; fi
      sleep 0.2
    done
    echo "rabbitmq-stomp: started the STOMP plugin, but nothing listens on $PORT" >&2
    exit 1
    ;;
  stop)
    if listening; then
      need
      # the tests' destinations (all named test.*) are durable queues on RabbitMQ: remove them
      rabbitmqctl -q list_queues --no-table-headers name | { grep '^test\.' || true; } |
        while read -r queue; do rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null; done
      rabbitmqctl -q eval "application:stop(rabbitmq_stomp)." >/dev/null
      echo "rabbitmq-stomp: stopped"
    fi
    ;;
  status)
    if listening; then echo "rabbitmq-stomp: listening on 127.0.0.1:$PORT"; else
      echo "rabbitmq-stomp: nothing on 127.0.0.1:$PORT"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
