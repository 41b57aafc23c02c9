#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run lint, types and tests.
# Usage: bash scripts/test.sh [pytest args]
# Python packages come from requirements-lock.txt (exact versions and hashes) into a venv of the
# project's own ($DEVID_VENV, default .venv), never from the machine's site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: SoftHSM2 (PKCS#11 tests), OpenSSL and curl (interop peers), PostgreSQL,
# OpenSSL's pkcs11-provider (TLS client authentication with a key in a token), and Mosquitto (the
# MQTT broker event delivery publishes to and the gateway stands in front of), Chromium (the
# dashboard's browser tests drive it through Playwright, which never downloads a browser), wrk
# (the load generator of `devid bench revocation`'s OCSP figures), and the TPM 2.0 stack: swtpm (the
# simulated TPM), tpm2-abrmd on a private D-Bus (the resource manager OpenSSL's tpm2 provider needs),
# tpm2-openssl (TLS with a TPM key), and libtss2-dev, pkg-config, gcc and python3-dev to build
# tpm2-pytss, which PyPI has as source only; libcoap3-bin (coap-client, the EST-coaps peer).
# scep: micromdm's scepclient, the SCEP peer.
missing=()
for pkg in softhsm2 openssl curl postgresql pkcs11-provider mosquitto chromium wrk \
  swtpm tpm2-abrmd libtss2-tcti-tabrmd0 dbus tpm2-openssl libtss2-dev pkg-config gcc python3-dev libcoap3-bin scep; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian's own python3 makes a venv with pip only with python3-venv installed.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  if [[ " ${missing[*]} " == *" pkcs11-provider "* ]] && . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ] \
    && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Debian 12 ships pkcs11-provider in bookworm-backports only (Debian 13 has it in main).
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | as_root tee /etc/apt/sources.list.d/backports.list >/dev/null
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The project's venv, from the lock: pip checks every hash; devid itself goes in editable, alone.
venv=$(realpath -m "${DEVID_VENV:-.venv}")
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-lock.txt
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
export PATH="$venv/bin:$PATH"

# PostgreSQL on 127.0.0.1:5432 (this machine kind runs one; a fresh machine may not).
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
export DEVID_TEST_PG_URL=${DEVID_TEST_PG_URL:-postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres}
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  # A fresh Debian cluster asks for a password over TCP: give the postgres role the test one.
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
fi

ruff check src tests
ruff format --check src tests
mypy --strict src
# Throw-away homes, stores and device folders on tmpfs when there is room: this disk pays ~1 ms of
# kernel time per file created and a real fsync per SQLite commit, which nearly doubled the run.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt 2000000 ]; then
  TMPDIR=$(mktemp -d /dev/shm/devid-tests.XXXXXX)
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
fi
# Two workers, one per core (xdist); a module's tests stay on one worker, so its module-scoped
# fixtures (a home, a running server) are set up once.
python -m pytest -q -n "${DEVID_TEST_WORKERS:-2}" --dist loadfile "$@"
