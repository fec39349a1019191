#!/usr/bin/env bash
# The gateway in front of real services on a single-node Docker Swarm (`make demo`).
#
#   scripts/demo.sh up     start dockerd and a swarm if needed, build the images, deploy the stacks
#                          as docs/swarm.md does, wait until the gateway routes, say what to try
#   scripts/demo.sh down   remove everything `up` made: stacks, networks, config, volumes, the images
#                          it built, the swarm and dockerd if it started them
#   scripts/demo.sh certs [DIR]
#                          a demo CA (if DIR has none) and a certificate for *.example.com signed by it,
#                          in DIR (default .work/demo/certs): what `up` makes the gateway's secrets of
#
# Run `scripts/setup.sh demo` first (as root: it installs docker.io, debootstrap, busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."

state=${DEMO_STATE_DIR:-.work/demo}
export SWARM_STATE_DIR=${SWARM_STATE_DIR:-.work/swarm}
export GATEWAY_IMAGE=${GATEWAY_IMAGE:-swarm-gateway/http-gateway:latest}
# the gateways' open files (stacks/gateway.yml `ulimits`): 65536, or less where dockerd's own hard
# limit is lower (a container cannot be given more)
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" = unlimited ] || [ "$hard_nofile" -gt 65536 ]; then hard_nofile=65536; fi
export GATEWAY_NOFILE=${GATEWAY_NOFILE:-$hard_nofile}
LOCAL_APP_IMAGE=swarm-gateway/hostname-httpd:latest
LOCAL_BASE_IMAGE=swarm-gateway/nginx-python:bookworm
APPS=(controller manager intra dmz)
certs=$state/certs
# the secrets stacks/gateway.yml names (external): the certificate then the CA's, the key, and the
# tokens the gateways show the controller (every zone's, and the dmz's)
SECRETS=(demo_crt demo_key gateway-controller-token gateway-controller-token-dmz
         gateway-admin-token gateway-admin-token-dmz)

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

https_routes() {  # https_routes PORT HOST: a 200 through the gateway, verified with the demo CA
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 --cacert "$certs/demo-ca.crt" \
    --resolve "$2:$1:127.0.0.1" "https://$2:$1/")" = 200 ]
}

# A CA for the demo (EC P-256), unless DIR has one, and a 30-day certificate for example.com and
# *.example.com signed by it. The CA may sign names under example.com only (a critical name
# constraint; example.com is reserved for examples), so trusting it cannot vouch for a real site.
make_certs() {  # make_certs DIR
  local dir=$1 conf
  command -v openssl >/dev/null || { log "openssl is not installed (scripts/setup.sh demo)"; exit 1; }
  mkdir -p "$dir"
  chmod 0700 "$dir"
  conf=$(mktemp)
  cat >"$conf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
nameConstraints = critical, permitted;DNS:example.com
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:example.com, DNS:*.example.com
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  (
    umask 077
    if [ ! -f "$dir/demo-ca.crt" ] || [ ! -f "$dir/demo-ca.key" ]; then
      # the date in its name tells this CA from an earlier demo's in a list of trusted ones
      openssl req -x509 -new -config "$conf" -extensions ca -sha256 -days 365 -nodes \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$dir/demo-ca.key" \
        -subj "/O=swarm-gateway demo/CN=swarm-gateway demo CA $(date -u +%Y-%m-%dT%H:%MZ)" \
        -out "$dir/demo-ca.crt" 2>/dev/null
      chmod 0644 "$dir/demo-ca.crt"
    fi
    openssl req -new -config "$conf" -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$dir/demo.key" -subj "/O=swarm-gateway demo/CN=*.example.com" \
      -out "$dir/demo.csr" 2>/dev/null
    openssl x509 -req -in "$dir/demo.csr" -CA "$dir/demo-ca.crt" -CAkey "$dir/demo-ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 \
      -extfile "$conf" -extensions leaf -out "$dir/demo.leaf.crt" 2>/dev/null
    # the gateway's certificate file: the server's certificate, then the CA's (the chain ends in a
    # root, so the gateway's default --tls-ca-bundle stays, for real certificates beside it)
    cat "$dir/demo.leaf.crt" "$dir/demo-ca.crt" >"$dir/demo.crt"
    chmod 0644 "$dir/demo.crt"
  )
  rm -f "$conf" "$dir/demo.csr" "$dir/demo.leaf.crt"
}

# The gateway's secrets: made from a new demo CA and certificate unless they exist.
demo_secrets() {
  local name existing=()
  for name in "${SECRETS[@]}"; do
    docker secret inspect "$name" >/dev/null 2>&1 && existing+=("$name")
  done
  if ((${#existing[@]} == ${#SECRETS[@]})); then
    [ -f "$certs/demo-ca.crt" ] \
      || log "the secrets ${SECRETS[*]} exist but $certs does not: they are not this demo's"
    return
  fi
  if ((${#existing[@]})); then
    log "the secrets ${existing[*]} exist without the others of ${SECRETS[*]}: remove them first"
    exit 1
  fi
  make_certs "$certs"
  # docs/swarm.md, "3. Deploy"
  docker secret create demo_crt "$certs/demo.crt" >/dev/null
  docker secret create demo_key "$certs/demo.key" >/dev/null
  openssl rand -hex 32 | docker secret create gateway-controller-token - >/dev/null
  openssl rand -hex 32 | docker secret create gateway-controller-token-dmz - >/dev/null
  openssl rand -hex 32 | docker secret create gateway-admin-token - >/dev/null
  openssl rand -hex 32 | docker secret create gateway-admin-token-dmz - >/dev/null
  printf '%s\n' "${SECRETS[@]}" >"$state/secrets"
  log "made a demo CA and a certificate for *.example.com in $certs, and the secrets ${SECRETS[*]}"
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

  demo_secrets
  # docs/swarm.md, "3. Deploy"
  deploy -c stacks/gateway.yml gateway
  deploy -c stacks/controller.yml controller
  deploy -c stacks/manager.yml manager
  deploy -c stacks/intra.yml intra
  deploy -c stacks/dmz.yml dmz

  log "waiting for the gateways to route (the first start pulls or creates the containers)"
  wait_for 180 "managerhttp through the gateway" routes 8080 managerhttp
  wait_for 60 "intrahttp through the gateway" routes 8080 intrahttp
  wait_for 60 "dmzhttp through the dmz gateway" routes 8081 dmzhttp
  wait_for 60 "manager.example.com over HTTPS" https_routes 443 manager.example.com

  cat <<'EOF'

The gateway routes. Try:

  curl -H 'Host: managerhttp' http://127.0.0.1:8080/          # a managerhttp task answers
  curl -H 'Host: intrahttp' http://127.0.0.1:8080/            # intrahttp
  curl -H 'Host: unknown.example' http://127.0.0.1:8080/      # 404: no route for this host
  curl -H 'Host: dmzhttp' http://127.0.0.1:8081/              # the dmz gateway: dmz routes only
  curl -H 'Host: intrahttp' http://127.0.0.1:8081/            # 404 there, whatever the Host

  docker service scale manager_managerhttp=5                  # then curl again a few times
  docker service scale manager_managerhttp=0                  # 503: no task
  # /metrics and /status need the admin token (the secret gateway-admin-token)
  TOKEN=$(docker exec $(docker ps -q -f label=com.docker.swarm.service.name=gateway_http-gateway) cat /run/secrets/gateway-admin-token)
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9180/metrics | grep gateway_upstream_endpoints
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9180/status

  make demo-down                                              # removes everything
EOF
  cat <<EOF

A route from service labels (docs/labels.md), without touching the gateway:

  docker service create --name shop --network gateway-intra --label gateway.hosts=shop.example \\
    --label gateway.port=8888 ${APP_IMAGE:-bretfisher/httpenv}
  curl -H 'Host: shop.example' http://127.0.0.1:8080/         # a second later: a shop task
  docker service rm shop                                      # 404 again

A change of the routes file (stacks/routes.yml): edit it, then deploy the controller again under a
new config name; only the controller restarts, each gateway reloads (docs/swarm.md):

  ROUTES_VERSION=2 docker stack deploy -c stacks/controller.yml controller
EOF
  local ca=$PWD/$certs/demo-ca.crt
  [[ $certs = /* ]] && ca=$certs/demo-ca.crt
  cat <<EOF

HTTPS: the *.example.com routes (manager, intra, www), with a certificate from a demo CA made
for this demo, which can sign names under example.com only. Their plain HTTP redirects to HTTPS.

  curl --cacert $ca --resolve manager.example.com:443:127.0.0.1 https://manager.example.com/
  curl --cacert $ca --resolve www.example.com:8444:127.0.0.1 https://www.example.com:8444/
  curl -i -H 'Host: manager.example.com' http://127.0.0.1:8080/  # 301 to https://manager.example.com/

The second is the dmz gateway. To trust the demo CA on this machine (then curl needs no --cacert):

  cp $ca /usr/local/share/ca-certificates/swarm-gateway-demo-ca.crt
  update-ca-certificates

In a browser, import $ca as a certificate authority
(Firefox: Settings > Certificates > View Certificates > Authorities > Import; Chrome: Settings >
Privacy and security > Security > Manage certificates), and point the names at this machine in
/etc/hosts: 127.0.0.1 manager.example.com intra.example.com www.example.com

\`make demo-down\` deletes the CA: remove it where you trusted it, too (rm the file above from
/usr/local/share/ca-certificates, then update-ca-certificates --fresh).
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
  docker volume ls -q --filter name=gateway_ --filter name=controller_gateway- \
    | xargs -r docker volume rm >/dev/null
  log "removed the stacks, their networks, config and volumes"
  if [ -f "$state/secrets" ]; then
    xargs -r docker secret rm <"$state/secrets" >/dev/null 2>&1 || true
    rm -f "$state/secrets"
    log "removed the secrets ${SECRETS[*]}"
  fi
  if [ -d "$certs" ]; then
    rm -rf "$certs"
    log "deleted the demo CA ($certs): remove it where you trusted it, if you did"
  fi
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
  certs) make_certs "${2:-$certs}" ;;
  *) echo "usage: $0 up|down|certs [DIR]" >&2; exit 2 ;;
esac
