#!/usr/bin/env bash
# The GPU checks of fluxc on the H200 machine, in one command, from the
# repository root. Nothing is built there: bring the binaries and artifact
# built on the dev machine in .dev/ (see README, "Running on a GPU"):
#
#   .dev/bin/fluxc            cargo build --release -p fluxc-cli
#   .dev/bin/gpu-tests        cargo test --release --test gpu --no-run (the binary it prints)
#   .dev/art/flux-schnell     .dev/bin/fluxc compile models/flux-schnell.toml -o .dev/art/flux-schnell
#
# and diffusers' wheels in .whl/. Steps (each can be skipped with
# STEPS="tests forward"):
#   tests    the GPU tests (every kernel kind vs the interpreter, tiny models
#            vs diffusers)
#   forward  full FLUX.1-schnell at 1024²: random weights saved by diffusers,
#            fp32 reference and diffusers eager bf16 timing, then fluxc run
#            (timing, per-step profile) and the comparison report
# Logs and reports go to $OUT (default ./out).
set -euo pipefail
OUT=${OUT:-out}
STEPS=${STEPS:-tests forward}
WORK=${WORK:-/tmp/fluxc-forward}
mkdir -p "$OUT"

export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export FLUXC_CUDA_INCLUDE=/usr/local/cuda/include:/usr/local/cuda/include/cccl
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

status=0
if [[ " $STEPS " == *" tests "* ]]; then
    # A failing test is reported at the end; the forward still runs.
    .dev/bin/gpu-tests --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_tests.log" || status=1
fi

if [[ " $STEPS " == *" forward "* ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    python3 benches/peers/make_reference.py --variant schnell --out "$WORK" 2>&1 | tee "$OUT/reference.log"
    .dev/bin/fluxc run .dev/art/flux-schnell --weights "$WORK/checkpoint" \
        --inputs "$WORK/io.safetensors" --output "$WORK/fluxc.safetensors" \
        --replays 30 --warmup 5 --profile --json "$OUT/fluxc_schnell.json" 2>&1 | tee "$OUT/fluxc_run.log"
    python3 benches/peers/compare.py --dir "$WORK" --fluxc-json "$OUT/fluxc_schnell.json" \
        --fluxc-output "$WORK/fluxc.safetensors" --commit "${COMMIT:-unknown}" \
        --command "benches/peers/run_h200.sh" --name forward_schnell_1024 --out "$OUT"
fi
exit $status
