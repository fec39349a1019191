#!/usr/bin/env bash
# Prepare a machine for the tests, the demo or the benchmarks.
#
#   scripts/setup.sh test    Debian packages the tests start (as root, Pebble for ACME), .venv with the test extras
#   scripts/setup.sh demo    Debian packages for a single-node swarm demo, .venv
#   scripts/setup.sh bench   test packages plus wrk, haproxy, caddy; .venv with the bench extras
#
# Installs only what is missing; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-test}
# nginx-light for its configuration layout; the nginx that runs comes from scripts/nginx-sid.py
# (patchelf, gpgv and xz-utils are what that script needs)
base_pkgs=(nginx-light dnsmasq-base keepalived iproute2 curl procps patchelf gpgv xz-utils
           debian-archive-keyring)
swarm_pkgs=(docker.io debootstrap busybox-static openssl)  # openssl: the demo's CA, htpasswd hashes
case "$what" in
  test)  pkgs=("${base_pkgs[@]}" "${swarm_pkgs[@]}" prometheus pebble chromium bind9 pdns-server pdns-backend-sqlite3 nghttp2-client); extras=test ;;  # pebble: ACME; chromium: the dashboard's tests; nghttp2-client: h2load (bursts of TLS clients); bind9 (+ tsig-keygen) and PowerDNS: DNS-01
  demo)  pkgs=("${base_pkgs[@]}" "${swarm_pkgs[@]}"); extras=test ;;
  bench) pkgs=("${base_pkgs[@]}" "${swarm_pkgs[@]}" wrk haproxy caddy prometheus nghttp2-client); extras=test,bench ;;
  *) echo "usage: $0 test|demo|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}"
    # no init system here: keep package scripts from starting the daemons they ship
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "setup: missing Debian packages ${missing[*]} (run as root to install them)" >&2
  fi
fi

# nginx 1.29.6 or newer (bookworm has 1.22): Debian sid's binary packages in a private root,
# their signatures and checksums checked, cached outside the clone; `nginx` on PATH is that one
if [ "$(id -u)" -eq 0 ]; then
  python3 scripts/nginx-sid.py install
  hash -r
  echo "setup: $(nginx -v 2>&1)"
else
  echo "setup: not root: using the nginx on PATH ($(nginx -v 2>&1 || echo none))" >&2
fi

# keepalived runs check scripts as this user under enable_script_security (keepalived/example)
if [ "$(id -u)" -eq 0 ] && ! id keepalived_script >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin keepalived_script
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$extras]"
