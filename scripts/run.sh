#!/usr/bin/env bash
# Set up probed in ./.venv and run it on the shipped probes.toml (or the file given).
# Fresh Debian: installs python3-venv if needed. Re-running is cheap and safe.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-probes.toml}"

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q .
exec .venv/bin/probed run -c "$config"
