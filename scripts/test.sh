#!/usr/bin/env bash
# Install everything the tests need (Debian servers, Python packages), then run the
# linters, the type checker and the whole test suite against real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  python3-venv openssl iproute2 util-linux procps
  nginx openssh-server mariadb-server exim4-daemon-light
  dovecot-core dovecot-pop3d dovecot-imapd vsftpd gnutls-bin
  prometheus prometheus-alertmanager
)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -q
  # The image's policy-rc.d keeps maintainer scripts from starting the daemons.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

echo "== ruff";  .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
