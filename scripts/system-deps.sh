#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing:
# libxml2-utils (xmllint, the reference validator), activemq (the test broker), postgresql
# (the store shared by several gateways, tested beside SQLite) and openssl (certificates for
# the broker TLS tests); with
# `bench`, also valgrind (bench/webhook_cost.py counts instructions with callgrind).
# And promtool, which checks and unit-tests docs/prometheus-alerts.yaml: taken out of Debian's
# prometheus package into var/tools/ (the package itself would install and start a server).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
promtool="$root/var/tools/promtool"

want=()
command -v xmllint >/dev/null 2>&1 || want+=(libxml2-utils)
[ -f /usr/share/activemq/bin/activemq.jar ] || want+=(activemq)
command -v java >/dev/null 2>&1 || want+=(default-jre-headless)
command -v pg_ctlcluster >/dev/null 2>&1 || want+=(postgresql)
command -v openssl >/dev/null 2>&1 || want+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || want+=(systemd)  # checks docs/smile-gateway.service
if [ "${1:-}" = bench ]; then
  command -v valgrind >/dev/null 2>&1 || want+=(valgrind)
fi
updated=""
if [ ${#want[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "system-deps: need root to install ${want[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "system-deps: installing ${want[*]}" >&2
  $sudo apt-get update -q >/dev/null
  updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
fi

if [ ! -x "$promtool" ]; then
  echo "system-deps: taking promtool out of Debian's prometheus package" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # apt-get download needs no root, but the package lists: a fresh machine may have none
  (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1) || {
    [ -n "$updated" ] || { if [ "$(id -u)" -eq 0 ]; then apt-get update -q >/dev/null; else sudo apt-get update -q >/dev/null; fi; }
    (cd "$work" && apt-get download -q prometheus >/dev/null)
  }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  mkdir -p "$(dirname "$promtool")"
  cp "$work/x/usr/bin/promtool" "$promtool"
  "$promtool" --version >/dev/null
fi
