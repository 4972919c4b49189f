#!/usr/bin/env bash
# The README's test command: fetch the offline assets (idempotent, verified), then
# run every default test of the workspace (no CUDA needed). Tests that use the real
# default model run here because the assets are present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh
cargo test --workspace --no-fail-fast "$@"
