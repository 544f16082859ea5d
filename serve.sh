#!/usr/bin/env bash
# Starts TorchServe with an archive from model_store/ and this repo's config.
# The integration tests and the Dockerfile run this very script.
#
#   ./serve.sh                                  # resnet18-embed, in the background, waits until ready:
#                                               # every model answers an image (python -m client.readiness)
#   ./serve.sh --wait 300                       # give the models up to 300 s (default 120)
#   ./serve.sh --model efficientnet_lite0-embed          # --model may be repeated
#   ./serve.sh --foreground --inference-address http://0.0.0.0:8080   # a container
#   ./serve.sh --foreground --edge-key /run/imgsim/edge/inference.key  # a replica behind its edge proxy:
#                                               # the inference key alone, for deploy/edge/start-edge.sh
#   ./serve.sh --set grpc_inference_port=17070 --set grpc_management_port=17071  # any config key
#   ./serve.sh --stop
#
# TorchServe writes key_file.json (the keys) and logs/ in the current directory; serve.sh adds
# logs/serving.properties, the config it started TorchServe with.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models=()
config="$here/config/config.properties"
store="$here/model_store"
foreground=0
wait_s=120
edge_key=""
declare -A override=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) models+=("$2"); shift 2 ;;
    --model-store) store="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --inference-address|--management-address|--metrics-address)
      key="${1#--}"; override["${key//-/_}"]="$2"; shift 2 ;;
    --set) override["${2%%=*}"]="${2#*=}"; shift 2 ;;
    --foreground) foreground=1; shift ;;
    --wait) wait_s="$2"; shift 2 ;;
    --edge-key) edge_key="$2"; shift 2 ;;
    --stop) exec torchserve --stop ;;
    -h|--help) sed -n '2,/^set -/{/^#/p}' "$0"; exit 0 ;;
    *) echo "serve.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#models[@]} -gt 0 ] || models=(resnet18-embed)
specs=()
for model in "${models[@]}"; do
  if [ ! -f "$store/$model.mar" ]; then
    echo "serve.sh: $store/$model.mar not found; build it first: ./build_mar.sh" >&2
    exit 2
  fi
  specs+=("$model=$model.mar")
done
# The config's metrics_config names a file from the repository root, but TorchServe resolves it
# against its own working directory (and a worker without it fails): the copy names it absolutely.
absolute_metrics_config() {
  HERE="$here" awk -F= -v OFS="=" '$1 == "metrics_config" && $2 !~ /^\// { $2 = ENVIRON["HERE"] "/" $2 } { print }'
}
# The config TorchServe runs with, overrides applied, is kept beside key_file.json: the readiness
# check (client/readiness.py) reads the addresses from there and the keys from key_file.json.
mkdir -p logs
effective="logs/serving.properties"
if [ ${#override[@]} -gt 0 ]; then
  grep -v -E "^($(IFS='|'; echo "${!override[*]}"))=" "$config" | absolute_metrics_config > "$effective"
  for key in "${!override[@]}"; do echo "$key=${override[$key]}" >> "$effective"; done
else
  absolute_metrics_config < "$config" > "$effective"
fi
args=(--start --ncs --ts-config "$effective" --model-store "$store" --models "${specs[@]}")
# The replica's edge proxy forwards with this TorchServe's inference key: hand it over alone (the
# management key stays here) once TorchServe has written a new key_file.json, in the background,
# since in the foreground this script becomes TorchServe. A restart makes a new key; the edge reloads.
hand_over_key() {
  local before key
  before="$(cat key_file.json 2>/dev/null || true)"
  for _ in $(seq $((wait_s * 5))); do
    if [ -s key_file.json ] && [ "$(cat key_file.json)" != "$before" ] && key="$(PYTHONPATH="$here" \
        "${PYTHON:-python3}" -c 'import sys; from client.server_files import read_keys
print(read_keys(sys.argv[1]).inference)' key_file.json 2>/dev/null)"; then
      (umask 027 && printf '%s\n' "$key" > "$edge_key.new") && mv "$edge_key.new" "$edge_key"
      return 0
    fi
    sleep 0.2
  done
  echo "serve.sh: TorchServe wrote no key_file.json within $wait_s s; nothing handed to $edge_key" >&2
  return 1
}
hand_over=""
if [ -n "$edge_key" ]; then
  rm -f "$edge_key"
  hand_over_key &
  hand_over=$!
fi
if [ "$foreground" = 1 ]; then
  exec torchserve "${args[@]}" --foreground
fi
torchserve "${args[@]}" > logs/torchserve.out 2>&1
# /ping says "Healthy" while a worker is still loading: ready means every model answered an image.
ready=(--dir "$PWD" --wait "$wait_s")
for model in "${models[@]}"; do ready+=(--model "$model"); done
if PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m client.readiness "${ready[@]}" >&2; then
  [ -z "$hand_over" ] || wait "$hand_over"
  address="$(sed -n 's/^inference_address=//p' "$effective" | tail -n 1)"
  echo "TorchServe is serving ${models[*]} at $address (inference key in $(pwd)/key_file.json)" >&2
  exit 0
fi
echo "serve.sh: not every model answered within $wait_s s; see $(pwd)/logs/model_log.log (TorchServe keeps trying; ./serve.sh --stop stops it)" >&2
exit 1
