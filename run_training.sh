#!/usr/bin/env bash
# The user's guide entry point: train with auto-resume (the default). Arguments pass through to
# `python -m finsense.train`: Hydra overrides, or the guide's --episodes N / --resume PATH|auto.
set -euo pipefail
exec python -m finsense.train "$@"
