#!/usr/bin/env bash
# Builds model_store/<arch>-embed.mar (default: resnet18-embed.mar). See --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/handler/build_archive.py" "$@"
