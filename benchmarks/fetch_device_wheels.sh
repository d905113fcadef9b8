#!/usr/bin/env bash
# The one wheel the lent GPU machine lacks (it has torch 2.11 + CUDA, transformers, safetensors, no diffusers,
# no Ray, no index): diffusers 0.42.1, 6 MiB, into the ignored folder .whl/ that the device command carries.
set -euo pipefail
cd "$(dirname "$0")/.."
pip download --no-deps --only-binary=:all: --dest .whl "diffusers==0.42.1"
ls -l .whl
