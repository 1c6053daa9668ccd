#!/usr/bin/env bash
# Installs the peer engine (Pathway, from PyPI) into a virtualenv for scripts/bench.sh.
# Idempotent: quick when the pinned versions are already there. Prints the venv's python.
# Environment: DISHFLOW_TOOLS (default ~/.local/share/dishflow).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DISHFLOW_TOOLS:-$HOME/.local/share/dishflow}/pathway-venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "peers: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! cmp -s requirements.txt "$VENV/.requirements.txt"; then
  echo "peers: installing $(grep -v '^#' requirements.txt | tr '\n' ' ')(about 1.6 GB, 1–2 minutes)" >&2
  "$VENV/bin/pip" install -q -r requirements.txt
  cp requirements.txt "$VENV/.requirements.txt"
fi
echo "$VENV/bin/python"
