#!/bin/sh
# The edge of one replica: nginx checks the service's shared key and forwards to this replica's
# TorchServe with the replica's own key (README, "Scale-out"). POSIX sh: it runs in the official
# nginx image (the Kubernetes sidecar, deploy/kubernetes/) and with Debian's nginx (deploy/local/).
#
#   IMGSIM_SHARED_KEY_FILE=/etc/imgsim/shared/key     a file holding only the shared key (the Secret)
#   IMGSIM_BACKEND_KEY_FILE=/run/imgsim/edge/inference.key   this replica's TorchServe inference key,
#                                                      handed over by `serve.sh --edge-key FILE`
#   IMGSIM_TORCHSERVE=127.0.0.1:8080                   TorchServe's inference address, on loopback
#   IMGSIM_EDGE_LISTEN=8000                            nginx `listen`: a port, or address:port
#   IMGSIM_EDGE_PREFIX=/tmp/imgsim-edge                the rendered config, pid file, temp files, logs
#   IMGSIM_EDGE_ACCESS_LOG=logs/access.log             relative to the prefix; /dev/stdout in a container
#   IMGSIM_EDGE_METRICS_LISTEN=9102                    optional: a listener serving only GET /metrics
#   IMGSIM_TORCHSERVE_METRICS=127.0.0.1:8082           TorchServe's metrics address, on loopback
#   NGINX=/usr/sbin/nginx                              the nginx to run (default: nginx on PATH)
#   deploy/edge/start-edge.sh
#
# It waits until both keys exist, renders nginx.conf from edge.conf.template and keys.conf
# (mode 0600) into the prefix, runs nginx in the foreground, and reloads it when either key
# changes: a restarted TorchServe makes a new key, a rotated Secret brings a new shared one.
# TERM or INT stops nginx gracefully (requests in flight are finished).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${IMGSIM_SHARED_KEY_FILE:?the file holding the shared key}"
: "${IMGSIM_BACKEND_KEY_FILE:?the file serve.sh --edge-key writes}"
: "${IMGSIM_TORCHSERVE:=127.0.0.1:8080}"
: "${IMGSIM_EDGE_LISTEN:=8000}"
: "${IMGSIM_EDGE_PREFIX:=/tmp/imgsim-edge}"
: "${IMGSIM_EDGE_ACCESS_LOG:=logs/access.log}"
: "${IMGSIM_EDGE_METRICS_LISTEN:=}"
: "${IMGSIM_TORCHSERVE_METRICS:=127.0.0.1:8082}"
export IMGSIM_TORCHSERVE IMGSIM_EDGE_LISTEN IMGSIM_EDGE_ACCESS_LOG IMGSIM_EDGE_METRICS_LISTEN IMGSIM_TORCHSERVE_METRICS
prefix=$IMGSIM_EDGE_PREFIX
template=${IMGSIM_EDGE_TEMPLATE:-$here/edge.conf.template}
# A Bearer token's characters (RFC 6750 b64token); nothing that could end an nginx string.
TOKEN_CHARS='A-Za-z0-9._~+/=-'
SHARED_MIN=32

say() { echo "start-edge.sh: $*" >&2; }

# The key in file $1 ($2 names it in messages), at least $3 characters long.
read_key() {
  key=$(cat "$1")
  case $key in
    *[!$TOKEN_CHARS]*|'') say "$2 in $1 has characters other than $TOKEN_CHARS"; return 1 ;;
  esac
  if [ ${#key} -lt "$3" ]; then
    say "$2 in $1 is ${#key} characters; at least $3 are needed (make one: openssl rand -base64 32)"
    return 1
  fi
  printf '%s' "$key"
}

keys_now() { cat "$IMGSIM_SHARED_KEY_FILE" "$IMGSIM_BACKEND_KEY_FILE" 2>/dev/null || true; }

render_keys() {
  shared=$(read_key "$IMGSIM_SHARED_KEY_FILE" "the shared key" "$SHARED_MIN") || return 1
  backend=$(read_key "$IMGSIM_BACKEND_KEY_FILE" "this replica's TorchServe key" 1) || return 1
  printf '# Rendered by start-edge.sh from %s and %s.\nset $imgsim_shared "Bearer %s";\nset $imgsim_torchserve "Bearer %s";\n' \
    "$IMGSIM_SHARED_KEY_FILE" "$IMGSIM_BACKEND_KEY_FILE" "$shared" "$backend" > "$prefix/conf/keys.conf.new"
  mv "$prefix/conf/keys.conf.new" "$prefix/conf/keys.conf"
}

umask 077
mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/tmp"
waited=0
until [ -s "$IMGSIM_SHARED_KEY_FILE" ] && [ -s "$IMGSIM_BACKEND_KEY_FILE" ]; do
  if [ $((waited % 30)) -eq 0 ]; then
    say "waiting for $IMGSIM_SHARED_KEY_FILE and $IMGSIM_BACKEND_KEY_FILE (TorchServe writes its key once it starts)"
  fi
  sleep 1
  waited=$((waited + 1))
done
render_keys
# shellcheck disable=SC2016  # the names are envsubst's, not the shell's
envsubst '${IMGSIM_EDGE_LISTEN} ${IMGSIM_TORCHSERVE} ${IMGSIM_EDGE_ACCESS_LOG}' < "$template" > "$prefix/conf/nginx.conf"
if [ -n "$IMGSIM_EDGE_METRICS_LISTEN" ]; then
  # shellcheck disable=SC2016
  envsubst '${IMGSIM_EDGE_METRICS_LISTEN} ${IMGSIM_TORCHSERVE_METRICS}' < "$here/metrics.conf.template" > "$prefix/conf/metrics.conf"
  say "Prometheus: GET /metrics on $IMGSIM_EDGE_METRICS_LISTEN (TorchServe's $IMGSIM_TORCHSERVE_METRICS)"
else
  echo "# no metrics listener: IMGSIM_EDGE_METRICS_LISTEN is not set" > "$prefix/conf/metrics.conf"
fi
# Started by root (CI, a plain machine), nginx would hand its workers to `nobody`, who cannot
# reach a private prefix: they run as the user who started the edge. The container runs it unprivileged.
user=""
if [ "$(id -u)" = 0 ]; then
  user="user $(id -un) $(id -gn);"
fi
nginx_pid=""
trap 'if [ -n "$nginx_pid" ]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; else exit 143; fi' TERM INT
"${NGINX:-nginx}" -e stderr -p "$prefix/" -c conf/nginx.conf -g "daemon off; $user" &
nginx_pid=$!
say "nginx $nginx_pid listens on $IMGSIM_EDGE_LISTEN for $IMGSIM_TORCHSERVE"
seen=$(keys_now)
while kill -0 "$nginx_pid" 2>/dev/null; do
  sleep 2 &
  wait $! || true
  now=$(keys_now)
  if [ -s "$IMGSIM_BACKEND_KEY_FILE" ] && [ "$now" != "$seen" ]; then
    if render_keys && kill -HUP "$nginx_pid" 2>/dev/null; then
      say "a key changed: nginx reloaded"
    fi
    seen=$now
  fi
done
wait "$nginx_pid"
