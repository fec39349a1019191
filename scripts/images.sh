#!/usr/bin/env bash
# Build the images the stacks run.
#
#   scripts/images.sh auto      the gateway image from the official nginx image when a registry
#                               answers, otherwise from local base images (and say so); the upstream
#   scripts/images.sh official  the gateway image from the official nginx image (registry + package index)
#   scripts/images.sh local     the gateway image from a local base image built with debootstrap
#   scripts/images.sh upstream  the test upstream: busybox httpd answering with its hostname
#   scripts/images.sh registry  exit 0 when a container registry answers (the official base pulls)
#   scripts/images.sh clean     remove every image this script builds (base images included)
#
# Image names come from the environment, so that tests can build their own:
#   GATEWAY_IMAGE   default swarm-gateway/http-gateway:latest
#   APP_IMAGE       default swarm-gateway/hostname-httpd:latest   (for `upstream`)
#   BASE_IMAGE      default swarm-gateway/nginx-python:bookworm   (the local base, kept as a cache)
#
# Without a registry: containers on the default bridge cannot reach the package index either, so
# the Python wheels are made here on the host and copied into the build context.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_IMAGE=${GATEWAY_IMAGE:-swarm-gateway/http-gateway:latest}
APP_IMAGE=${APP_IMAGE:-swarm-gateway/hostname-httpd:latest}
# nginx 1.29.6 or newer, from Debian sid (scripts/nginx-sid.py), in the local base; its version
# is in the tag, so that a base cached with another nginx is not reused
NGINX_ROOT=${NGINX_ROOT:-/opt/swarm-gateway/nginx}
nginx_version() { python3 scripts/nginx-sid.py version --root "$NGINX_ROOT"; }
BASE_IMAGE=${BASE_IMAGE:-swarm-gateway/nginx-python:bookworm-nginx$(nginx_version || echo none)}
# the Dockerfile's default base; pulling it is also how we find out whether a registry answers
OFFICIAL_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' images/http-gateway/Dockerfile)

log() { echo "images: $*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The first `URIs:` of the host's Debian sources: read here, never written to any file.
debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources mirror=""
  [ -r "$f" ] && mirror=$(awk '/^URIs:/ {print $2; exit}' "$f")
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list)
  fi
  [ -n "$mirror" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
  echo "$mirror"
}

# A temporary folder, removed when the script ends.
workdir=""
tmp() {
  [ -n "$workdir" ] || { workdir=$(mktemp -d); trap 'rm -rf "$workdir"' EXIT; }
  mktemp -d "$workdir/XXXX"
}

build_base() {
  if have_image "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists (cached; 'scripts/images.sh clean' removes it)"
    return
  fi
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (scripts/setup.sh demo)"; exit 1; }
  local rootfs mirror
  rootfs=$(tmp)/rootfs
  mirror=$(debian_mirror)
  log "debootstrap bookworm minbase with python3, and nginx $(nginx_version) (about a minute)"
  debootstrap --variant=minbase \
    --include=nginx-light,python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$(dirname "$rootfs")/debootstrap.log" 2>&1 \
    || { tail -20 "$(dirname "$rootfs")/debootstrap.log" >&2; exit 1; }
  # the nginx that runs: sid's, at the same path as on the host (its loader and libraries are
  # found by absolute path), replacing bookworm's 1.22
  [ -x "$NGINX_ROOT/usr/sbin/nginx" ] || { log "no nginx in $NGINX_ROOT (scripts/setup.sh installs it)"; exit 1; }
  mkdir -p "$rootfs$(dirname "$NGINX_ROOT")"
  cp -a "$NGINX_ROOT" "$rootfs$NGINX_ROOT"
  ln -sf "$NGINX_ROOT/usr/sbin/nginx" "$rootfs/usr/sbin/nginx"
  # apt sources name the mirror this machine uses: they stay out of the image, as do caches
  rm -rf "$rootfs"/etc/apt/sources.list "$rootfs"/etc/apt/sources.list.d/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/root/.cache
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null
  log "built $BASE_IMAGE"
}

build_upstream() {
  if have_image "$APP_IMAGE"; then
    log "$APP_IMAGE exists"
    return
  fi
  local busybox rootfs
  busybox=/bin/busybox
  # the image has no libraries: only the static build runs in it
  if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    log "a static busybox is needed (Debian package busybox-static; scripts/setup.sh demo)"; exit 1
  fi
  rootfs=$(tmp)
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
  done
  install -m 0755 images/hostname-httpd/serve "$rootfs/serve"
  tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/bin' -c 'EXPOSE 8888' -c 'CMD ["/serve"]' \
    - "$APP_IMAGE" >/dev/null
  log "built $APP_IMAGE"
}

# The build context: only what the Dockerfile copies, and (offline) the wheels made here.
build_context() {
  local ctx
  ctx=$(tmp)
  cp pyproject.toml "$ctx/"
  [ -f README.md ] && cp README.md "$ctx/"
  cp -r agent "$ctx/agent"
  mkdir -p "$ctx/images"
  cp -r images/http-gateway "$ctx/images/http-gateway"
  find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
  echo "$ctx"
}

host_wheels() {
  local into=$1 py=.venv/bin/python
  [ -x "$py" ] || py=python3
  log "making wheels on the host for an offline build"
  # the project's dependencies and its build backend, as pyproject.toml names them; the
  # project's own wheel is built in the image
  "$py" - >"$into.txt" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
  "$py" -m pip wheel -q --wheel-dir "$into" -r "$into.txt" >"$into.log" 2>&1 \
    || { cat "$into.log" >&2; exit 1; }
}

build_gateway_local() {
  build_base
  local ctx
  ctx=$(build_context)
  host_wheels "$ctx/images/http-gateway/wheels"
  log "building $GATEWAY_IMAGE on $BASE_IMAGE"
  docker build -q -t "$GATEWAY_IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_INDEX=--no-index \
    -f "$ctx/images/http-gateway/Dockerfile" "$ctx" >"$ctx.log" 2>&1 || { cat "$ctx.log" >&2; exit 1; }
  drop_build_stage
  log "built $GATEWAY_IMAGE"
}

build_gateway_official() {
  log "building $GATEWAY_IMAGE on $OFFICIAL_BASE"
  docker build -q -t "$GATEWAY_IMAGE" -f images/http-gateway/Dockerfile .
  drop_build_stage
  log "built $GATEWAY_IMAGE"
}

# The builder without BuildKit keeps the wheel-building stage as an untagged image, and a rebuild
# leaves the image that had the tag before without a name: remove both.
previous_gateway=""
drop_build_stage() {
  docker image prune -f --filter label=swarm-gateway.stage=build >/dev/null
  if [ -n "$previous_gateway" ] && [ "$previous_gateway" != "$(image_id "$GATEWAY_IMAGE")" ]; then
    docker image rm "$previous_gateway" >/dev/null 2>&1 || true  # still used by a container
  fi
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

registry_answers() {
  have_image "$OFFICIAL_BASE" && return 0
  timeout 60 docker pull -q "$OFFICIAL_BASE" >/dev/null 2>&1
}

clean() {
  local img
  for img in "$GATEWAY_IMAGE" "$APP_IMAGE" "$BASE_IMAGE"; do
    if have_image "$img"; then
      docker image rm "$img" >/dev/null && log "removed $img"
    fi
  done
}

previous_gateway=$(image_id "$GATEWAY_IMAGE")
case "${1:-}" in
  auto)
    if registry_answers; then
      build_gateway_official
    else
      log "no container registry answers: building local base images instead (docs/swarm.md)"
      build_gateway_local
    fi
    build_upstream
    ;;
  official) build_gateway_official ;;
  local) build_gateway_local ;;
  registry) registry_answers ;;
  base) build_base ;;
  upstream) build_upstream ;;
  clean) clean ;;
  *) echo "usage: $0 auto|official|local|base|upstream|registry|clean" >&2; exit 2 ;;
esac
