#!/usr/bin/env bash
# Install what shoal needs: Debian packages (only the missing ones) and the .venv
# (re)built when pyproject.toml is newer than its stamp. Idempotent and fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt_install [apt-get options] -- PACKAGE...: install those not installed yet; no package may start a
# daemon (docker-registry would serve on :5000): the tests start their own
apt_install() {
  local opts=() missing=() p policy=/usr/sbin/policy-rc.d made_policy=0
  while [[ $1 != -- ]]; do opts+=("$1"); shift; done
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "install-deps: apt-get install ${opts[*]} ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -q "${opts[@]}" "${missing[@]}"
  if ((made_policy)); then rm -f "$policy"; fi
}

# docker-registry and apache2-utils (htpasswd): the private registry of tests/integration/test_registry_auth.py
pkgs=(docker.io etcd-server etcd-client busybox-static nftables iproute2 docker-registry apache2-utils)
python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
apt_install -- "${pkgs[@]}"
# encrypted overlays: WireGuard (wireguard-go where the kernel has no module, configured with wg) and
# tcpdump for the capture test; no recommends: wireguard-tools would pull a kernel module package (DKMS)
apt_install --no-install-recommends -- wireguard-go wireguard-tools tcpdump

stamp=.venv/.shoal-installed
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c '' 2>/dev/null; then
  echo "install-deps: creating .venv"
  rm -rf .venv
  python3 -m venv .venv
fi
if [[ ! -e $stamp || pyproject.toml -nt $stamp ]]; then
  echo "install-deps: pip install -e '.[test]'"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
