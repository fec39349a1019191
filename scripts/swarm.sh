#!/usr/bin/env bash
# A single-node Docker Swarm for the demo and the swarm tests, on a machine without systemd.
#
#   scripts/swarm.sh up      start dockerd unless it answers, init a swarm unless this node is in one,
#                            and label this node for every zone and both gateways
#   scripts/swarm.sh down    undo what `up` did, and only that: labels it added, the swarm it
#                            initialised, the dockerd it started
#   scripts/swarm.sh labels  print this node's labels
#
# What `up` made is remembered in $SWARM_STATE_DIR (default .work/swarm) so that `down` never
# stops a dockerd or leaves a swarm that was there before.
set -euo pipefail
cd "$(dirname "$0")/.."

state=${SWARM_STATE_DIR:-.work/swarm}
# One node plays every part: it carries the label of each zone and of both gateways.
# On a real swarm each node gets only the labels of its own zone (docs/swarm.md).
labels=(gateway=true dmz-gateway=true zone.manager=true zone.dmz=true zone.intra=true)

log() { echo "swarm: $*" >&2; }

docker_answers() { docker info >/dev/null 2>&1; }

start_dockerd() {
  if docker_answers; then
    log "dockerd is already running"
    return
  fi
  command -v dockerd >/dev/null || { log "dockerd is not installed (scripts/setup.sh demo installs docker.io)"; exit 1; }
  mkdir -p "$state"
  log "starting dockerd (log: $state/dockerd.log)"
  # no init system: a session of its own keeps dockerd alive after this script ends
  setsid dockerd >"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state/dockerd.pid"
  for _ in $(seq 1 120); do
    docker_answers && return
    kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null || { tail -20 "$state/dockerd.log" >&2; exit 1; }
    sleep 0.5
  done
  log "dockerd did not answer within 60 s"; tail -20 "$state/dockerd.log" >&2; exit 1
}

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }

init_swarm() {
  if [ "$(swarm_state)" = active ]; then
    log "this node is already in a swarm"
    return
  fi
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  touch "$state/swarm-initialised"
  log "initialised a single-node swarm"
}

add_labels() {
  local node added=()
  node=$(docker info --format '{{.Swarm.NodeID}}')
  for kv in "${labels[@]}"; do
    local key=${kv%%=*}
    if [ -z "$(docker node inspect -f "{{index .Spec.Labels \"$key\"}}" "$node")" ]; then
      added+=("$key")
      docker node update --label-add "$kv" "$node" >/dev/null
    fi
  done
  if ((${#added[@]})); then
    printf '%s\n' "${added[@]}" >>"$state/labels-added"
    log "labelled this node: ${added[*]}"
  fi
}

up() {
  mkdir -p "$state"
  start_dockerd
  init_swarm
  add_labels
}

down() {
  if ! docker_answers; then
    log "dockerd is not running"
    rm -f "$state/dockerd.pid" "$state/swarm-initialised" "$state/labels-added"
    return
  fi
  if [ -f "$state/swarm-initialised" ]; then
    docker swarm leave --force >/dev/null 2>&1 || true
    rm -f "$state/swarm-initialised" "$state/labels-added"
    log "left the swarm"
  elif [ -f "$state/labels-added" ]; then
    local node
    node=$(docker info --format '{{.Swarm.NodeID}}')
    while read -r key; do
      docker node update --label-rm "$key" "$node" >/dev/null 2>&1 || true
    done <"$state/labels-added"
    rm -f "$state/labels-added"
    log "removed the labels it added"
  fi
  if [ -f "$state/dockerd.pid" ]; then
    local pid
    pid=$(cat "$state/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      log "stopped dockerd"
    fi
    rm -f "$state/dockerd.pid"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  labels) docker node inspect -f '{{json .Spec.Labels}}' "$(docker info --format '{{.Swarm.NodeID}}')" ;;
  *) echo "usage: $0 up|down|labels" >&2; exit 2 ;;
esac
