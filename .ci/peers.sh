#!/usr/bin/env bash
# Start / stop the real peers the test suite uses. Idempotent; quiet on success.
#   bash .ci/peers.sh start|stop
# PostgreSQL: the machine's own server on 127.0.0.1:5432 (started if it is down,
# installed if it is missing). It is left running on stop: it is the machine's.
set -euo pipefail

apt_ready=""
apt_install() {
  if [ -z "$apt_ready" ]; then
    apt-get update -qq >/dev/null
    apt_ready=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres_start() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "peers: installing PostgreSQL"
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "peers: no PostgreSQL cluster found" >&2
    return 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.2
  done
  echo "peers: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

case "${1:-}" in
  start)
    postgres_start || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without PostgreSQL (its tests will skip)"; }
    ;;
  stop)
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
