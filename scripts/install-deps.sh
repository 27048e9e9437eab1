#!/usr/bin/env bash
# Install what shoal needs: Debian packages (only the missing ones) and the .venv
# (re)built when pyproject.toml is newer than its stamp. Idempotent and fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(docker.io etcd-server etcd-client busybox-static nftables iproute2)
python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi

# encrypted overlays: WireGuard (wireguard-go where the kernel has no module, configured with wg) and
# tcpdump for the capture test; no recommends: wireguard-tools would pull a kernel module package (DKMS)
missing=()
for p in wireguard-go wireguard-tools tcpdump; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install --no-install-recommends ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

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
