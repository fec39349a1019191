#!/usr/bin/env bash
# The gateway in front of real services on a single-node Docker Swarm (`make demo`).
#
#   scripts/demo.sh up     start dockerd and a swarm if needed, build the images, deploy the stacks
#                          as docs/swarm.md does, wait until the gateway routes, say what to try
#   scripts/demo.sh down   remove everything `up` made: stacks, networks, config, volumes, the images
#                          it built, the swarm and dockerd if it started them
#
# Run `scripts/setup.sh demo` first (as root: it installs docker.io, debootstrap, busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."

state=${DEMO_STATE_DIR:-.work/demo}
export SWARM_STATE_DIR=${SWARM_STATE_DIR:-.work/swarm}
export GATEWAY_IMAGE=${GATEWAY_IMAGE:-swarm-gateway/http-gateway:latest}
LOCAL_APP_IMAGE=swarm-gateway/hostname-httpd:latest
LOCAL_BASE_IMAGE=swarm-gateway/nginx-python:bookworm
APPS=(manager intra dmz)

log() { echo "demo: $*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# remember an image to remove on `down`, unless it was there before `up`
built() { grep -qxF "$1" "$state/images" 2>/dev/null || echo "$1" >>"$state/images"; }

# docker stack deploy, without the warning that a local image has no registry digest
deploy() {
  docker stack deploy "$@" 2>&1 | grep -v -e 'could not be accessed on a registry' \
    -e 'independently,' -e 'different nodes running' -e 'versions of the image' -e '^$' \
    -e 'detach=false' >&2 || true
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${seconds}s waiting for $what"; return 1; }
    sleep 0.5
  done
}

routes() {  # routes PORT HOST: a 200 through the gateway
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 -H "Host: $2" "http://127.0.0.1:$1/")" = 200 ]
}

up() {
  [ "$(id -u)" -eq 0 ] || { log "needs root (dockerd)"; exit 1; }
  mkdir -p "$state"
  scripts/swarm.sh up

  if scripts/images.sh registry; then
    log "a container registry answers: building on the official nginx image"
    have_image "$GATEWAY_IMAGE" || built "$GATEWAY_IMAGE"
    scripts/images.sh official
    unset APP_IMAGE  # the stacks' default, the article's bretfisher/httpenv
  else
    log "no container registry answers: building local base images instead (debootstrap, busybox)"
    have_image "$GATEWAY_IMAGE" || built "$GATEWAY_IMAGE"
    have_image "$LOCAL_BASE_IMAGE" || built "$LOCAL_BASE_IMAGE"
    have_image "$LOCAL_APP_IMAGE" || built "$LOCAL_APP_IMAGE"
    scripts/images.sh local
    APP_IMAGE=$LOCAL_APP_IMAGE scripts/images.sh upstream
    export APP_IMAGE=$LOCAL_APP_IMAGE
  fi

  # docs/swarm.md, "3. Deploy"
  deploy -c stacks/gateway.yml gateway
  deploy -c stacks/manager.yml manager
  deploy -c stacks/intra.yml intra
  deploy -c stacks/dmz.yml dmz

  log "waiting for the gateways to route (the first start pulls or creates the containers)"
  wait_for 180 "managerhttp through the gateway" routes 8080 managerhttp
  wait_for 60 "intrahttp through the gateway" routes 8080 intrahttp
  wait_for 60 "dmzhttp through the dmz gateway" routes 8081 dmzhttp

  cat <<'EOF'

The gateway routes. Try:

  curl -H 'Host: managerhttp' http://127.0.0.1:8080/          # a managerhttp task answers
  curl -H 'Host: manager.example.com' http://127.0.0.1:8080/  # the same service, another name
  curl -H 'Host: intrahttp' http://127.0.0.1:8080/            # intrahttp
  curl -H 'Host: unknown.example' http://127.0.0.1:8080/      # 404: no route for this host
  curl -H 'Host: dmzhttp' http://127.0.0.1:8081/              # the dmz gateway: dmz routes only
  curl -H 'Host: intrahttp' http://127.0.0.1:8081/            # 404 there, whatever the Host

  docker service scale manager_managerhttp=5                  # then curl again a few times
  docker service scale manager_managerhttp=0                  # 503: no task
  curl -s http://127.0.0.1:9180/metrics | grep gateway_upstream_endpoints
  curl -s http://127.0.0.1:9180/status

  make demo-down                                              # removes everything
EOF
}

no_containers() {  # no_containers STACK...: true when none of the stacks has a container left
  local stack
  for stack in "$@"; do
    [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$stack")" ] || return 1
  done
}

down() {
  if ! docker info >/dev/null 2>&1; then
    log "dockerd is not running: nothing to remove"
    scripts/swarm.sh down
    return
  fi
  docker stack rm "${APPS[@]}" gateway-ingress >/dev/null 2>&1 || true
  wait_for 60 "the applications to stop" no_containers "${APPS[@]}" gateway-ingress || true
  # the gateway stack owns the networks the applications used
  docker stack rm gateway >/dev/null 2>&1 || true
  wait_for 60 "the gateway containers to go" no_containers gateway || true
  wait_for 60 "the gateway networks to go" \
    sh -c '! docker network ls -q --filter name=gateway- | grep -q .' || true
  docker config ls -q --filter name=gateway- | xargs -r docker config rm >/dev/null
  docker volume ls -q --filter name=gateway_ | xargs -r docker volume rm >/dev/null
  log "removed the stacks, their networks, config and volumes"
  if [ -f "$state/images" ]; then
    xargs -r docker image rm <"$state/images" >/dev/null 2>&1 || true
    log "removed the images it built: $(tr '\n' ' ' <"$state/images")"
    rm -f "$state/images"
  fi
  scripts/swarm.sh down
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
