#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing:
# libxml2-utils (xmllint, the reference validator), activemq (the test broker), postgresql
# (the store shared by several gateways, tested beside SQLite) and openssl (certificates for
# the broker TLS tests); with
# `bench`, also valgrind (bench/webhook_cost.py counts instructions with callgrind).
set -euo pipefail

want=()
command -v xmllint >/dev/null 2>&1 || want+=(libxml2-utils)
[ -f /usr/share/activemq/bin/activemq.jar ] || want+=(activemq)
command -v java >/dev/null 2>&1 || want+=(default-jre-headless)
command -v pg_ctlcluster >/dev/null 2>&1 || want+=(postgresql)
command -v openssl >/dev/null 2>&1 || want+=(openssl)
if [ "${1:-}" = bench ]; then
  command -v valgrind >/dev/null 2>&1 || want+=(valgrind)
fi
[ ${#want[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "system-deps: need root to install ${want[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "system-deps: installing ${want[*]}" >&2
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
