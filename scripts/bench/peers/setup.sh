#!/usr/bin/env bash
# Installs a peer engine of scripts/bench.sh into its own virtualenv and prints the venv's
# python:
#   setup.sh [pathway]   Pathway (PyPI), from requirements.txt
#   setup.sh spark       PySpark (PyPI), from requirements-spark.txt, Java 17 (Debian
#                        openjdk-17-jre-headless) when no `java` is on the PATH, and the
#                        PostgreSQL JDBC driver (Debian libpostgresql-jdbc-java)
# Idempotent: quick when the pinned versions are already there.
# Environment: DISHFLOW_TOOLS (default ~/.local/share/dishflow).
set -euo pipefail
cd "$(dirname "$0")"
PEER="${1:-pathway}"
case "$PEER" in
  pathway) REQUIREMENTS=requirements.txt SIZE="about 1.6 GB, 1–2 minutes" ;;
  spark) REQUIREMENTS=requirements-spark.txt SIZE="about 450 MB, 1–2 minutes" ;;
  *) echo "usage: setup.sh [pathway|spark]" >&2; exit 2 ;;
esac
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "$PEER" = spark ] && ! command -v java >/dev/null; then
  echo "peers: installing Java 17 (Debian openjdk-17-jre-headless)" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
# Spark writes its marts with the DataFrame JDBC writer: the PostgreSQL JDBC driver.
if [ "$PEER" = spark ] && [ ! -f /usr/share/java/postgresql.jar ]; then
  echo "peers: installing the PostgreSQL JDBC driver (Debian libpostgresql-jdbc-java)" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java >/dev/null
fi
VENV="${DISHFLOW_TOOLS:-$HOME/.local/share/dishflow}/$PEER-venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "peers: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! cmp -s "$REQUIREMENTS" "$VENV/.requirements.txt"; then
  echo "peers: installing $(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')($SIZE)" >&2
  "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/.requirements.txt"
fi
echo "$VENV/bin/python"
