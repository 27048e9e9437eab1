#!/usr/bin/env bash
# Build shoal/demo-web:latest and shoal/demo-busybox:latest with `docker import`
# (no registry needed) from Debian's busybox-static.
#
# Usage: images/build.sh [--force]
#   DOCKER  engine command (default: docker -H unix:///var/run/docker.sock, the real dockerd)
# An image is skipped when it exists and was built from the same inputs, unless --force.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -ra DOCKER <<<"${DOCKER:-docker -H unix:///var/run/docker.sock}"
BUSYBOX=/bin/busybox
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

[[ -x $BUSYBOX ]] || { echo "build.sh: $BUSYBOX missing; run 'make install' (busybox-static)" >&2; exit 1; }

# Everything that goes into the images; stored as a label to notice stale images.
hash=$(cat "$BUSYBOX" "$here/build.sh" "$here"/web/* | sha256sum | cut -c1-16)

needs_build() {
  local have
  have=$("${DOCKER[@]}" image inspect --format '{{index .Config.Labels "org.shoal.build-hash"}}' "$1" 2>/dev/null || true)
  [[ $force == 1 || $have != "$hash" ]]
}

root=$(mktemp -d)
check=shoal-build-check-$$
cleanup() {
  rm -rf "$root"
  "${DOCKER[@]}" rm -f "$check-web" "$check-bb" >/dev/null 2>&1 || true
}
trap cleanup EXIT

make_rootfs() {
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,tmp,var/log,www/cgi-bin,proc,sys,dev}
  chmod 1777 "$root/tmp"
  install -m 0755 "$BUSYBOX" "$root/bin/busybox"
  while read -r applet; do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
  done < <("$BUSYBOX" --list)
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  install -m 0755 "$here/web/start.sh" "$root/usr/local/bin/demo-web"
  install -m 0755 "$here/web/index.cgi" "$root/www/cgi-bin/index.cgi"
  install -m 0644 "$here/web/httpd.conf" "$root/etc/httpd.conf"
}

# import TAG CHANGE... : import the rootfs as TAG with the given Dockerfile changes.
import() {
  local tag=$1 c changes=()
  shift
  for c in "$@" 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'WORKDIR /' "LABEL org.shoal.build-hash=$hash"; do
    changes+=(--change "$c")
  done
  tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    "${DOCKER[@]}" import "${changes[@]}" -m "shoal demo image (busybox-static)" - "$tag" >/dev/null
  echo "build.sh: built $tag"
}

# Smoke test: the web image answers with its hostname, the busybox image runs commands.
check_images() {
  local want got=""
  "${DOCKER[@]}" run -d --name "$check-web" shoal/demo-web:latest >/dev/null
  want="Hello from $("${DOCKER[@]}" exec "$check-web" hostname)"
  for _ in $(seq 20); do
    got=$("${DOCKER[@]}" exec "$check-web" wget -qO- http://127.0.0.1/ 2>/dev/null) && break
    sleep 0.25
  done
  [[ $got == "$want" ]] || { echo "build.sh: demo-web answered '$got', want '$want'" >&2; exit 1; }
  got=$("${DOCKER[@]}" run --rm --name "$check-bb" shoal/demo-busybox:latest sh -c 'echo ok')
  [[ $got == ok ]] || { echo "build.sh: demo-busybox answered '$got'" >&2; exit 1; }
  echo "build.sh: images checked ($want)"
}

built=0
if needs_build shoal/demo-web:latest; then
  [[ -e $root/bin/busybox ]] || make_rootfs
  import shoal/demo-web:latest 'CMD ["/usr/local/bin/demo-web"]' 'EXPOSE 80/tcp'
  built=1
fi
if needs_build shoal/demo-busybox:latest; then
  [[ -e $root/bin/busybox ]] || make_rootfs
  import shoal/demo-busybox:latest 'CMD ["sh"]'
  built=1
fi
if [[ $built == 1 ]]; then check_images; else echo "build.sh: images up to date"; fi
