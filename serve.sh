#!/usr/bin/env bash
# Starts TorchServe with an archive from model_store/ and this repo's config.
# The integration tests and the Dockerfile run this very script.
#
#   ./serve.sh                                  # resnet18-embed, in the background, waits until ready
#   ./serve.sh --model efficientnet_lite0-embed          # --model may be repeated
#   ./serve.sh --foreground --inference-address http://0.0.0.0:8080   # a container
#   ./serve.sh --set grpc_inference_port=17070 --set grpc_management_port=17071  # any config key
#   ./serve.sh --stop
#
# TorchServe writes key_file.json (the inference key) and logs/ in the current directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models=()
config="$here/config/config.properties"
store="$here/model_store"
foreground=0
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
    --stop) exec torchserve --stop ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
# Overridden addresses go into a copy of the config; everything else stays as reviewed.
effective="$config"
if [ ${#override[@]} -gt 0 ]; then
  effective="$(mktemp "${TMPDIR:-/tmp}/imgsim-config.XXXXXX.properties")"
  grep -v -E "^($(IFS='|'; echo "${!override[*]}"))=" "$config" > "$effective"
  for key in "${!override[@]}"; do echo "$key=${override[$key]}" >> "$effective"; done
fi
args=(--start --ncs --ts-config "$effective" --model-store "$store" --models "${specs[@]}")
if [ "$foreground" = 1 ]; then
  exec torchserve "${args[@]}" --foreground
fi
mkdir -p logs
torchserve "${args[@]}" > logs/torchserve.out 2>&1
address="$(sed -n 's/^inference_address=//p' "$effective" | tail -n 1)"
for _ in $(seq 1 120); do
  key="$(sed -n '/"inference"/,/}/s/.*"key": "\([^"]*\)".*/\1/p' key_file.json 2>/dev/null || true)"
  if curl -s -H "Authorization: Bearer $key" "$address/ping" 2>/dev/null | grep -q Healthy; then
    echo "TorchServe is serving ${models[*]} at $address (inference key in $(pwd)/key_file.json)" >&2
    exit 0
  fi
  sleep 1
done
echo "serve.sh: TorchServe did not become healthy in 120 s; see $(pwd)/logs/model_log.log" >&2
exit 1
