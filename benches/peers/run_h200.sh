#!/usr/bin/env bash
# The GPU checks of fluxc on the H200 machine, in one command, from the
# repository root. Nothing is built there: bring what benches/peers/prepare.sh
# builds on the dev machine in .dev/ (binaries, and one artifact per variant),
# and diffusers' and torchao's wheels in .whl/. Steps (each can be skipped
# with STEPS="tests forward"):
#   tests    the GPU tests (every kernel kind vs the interpreter, tiny models
#            vs diffusers, fp8 vs the interpreter's fp8)
#   forward  full FLUX.1-schnell at 1024² with TEXT_TOKENS text tokens: random
#            weights saved by diffusers, fp32 reference, diffusers eager bf16
#            and (TORCHAO=1) torchao fp8 per tensor and per row, then
#            `fluxc run` of every variant in VARIANTS (timing, per-step
#            profile) and the comparison report
# Reports go to $OUT (default ./out), every log packed in $OUT/logs.tar.gz.
set -euo pipefail
OUT=${OUT:-out}
STEPS=${STEPS:-tests forward}
WORK=${WORK:-/tmp/fluxc-forward}
TEXT_TOKENS=${TEXT_TOKENS:-512}
VARIANTS=${VARIANTS:-bf16 fp8-tensor fp8-row}
TORCHAO=${TORCHAO:-1}
mkdir -p "$OUT"

export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export FLUXC_CUDA_INCLUDE=/usr/local/cuda/include:/usr/local/cuda/include/cccl
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

status=0
if [[ " $STEPS " == *" tests "* ]]; then
    # A failing test is reported at the end; the forward still runs.
    .dev/bin/gpu-fp8-tests --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_fp8_tests.log" || status=1
    .dev/bin/gpu-tests --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_tests.log" || status=1
fi

if [[ " $STEPS " == *" forward "* ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    torchao=()
    [[ "$TORCHAO" == 1 ]] && torchao=(--torchao)
    python3 benches/peers/make_reference.py --variant schnell --text-tokens "$TEXT_TOKENS" \
        "${torchao[@]}" --out "$WORK" 2>&1 | tee "$OUT/reference.log"
    compared=()
    for variant in $VARIANTS; do
        if .dev/bin/fluxc run ".dev/art/schnell-$TEXT_TOKENS-$variant" --weights "$WORK/checkpoint" \
            --inputs "$WORK/io.safetensors" --output "$WORK/fluxc_$variant.safetensors" \
            --replays 30 --warmup 5 --profile --json "$OUT/fluxc_$variant.json" \
            2>&1 | tee "$OUT/fluxc_run_$variant.log"; then
            compared+=(--fluxc "$variant" "$OUT/fluxc_$variant.json" "$WORK/fluxc_$variant.safetensors")
        else
            status=1
        fi
    done
    if (( ${#compared[@]} )); then
        python3 benches/peers/compare.py --dir "$WORK" "${compared[@]}" --commit "${COMMIT:-unknown}" \
            --command "benches/peers/run_h200.sh" --name "forward_schnell_1024_t$TEXT_TOKENS" --out "$OUT"
    fi
fi
# The device returns only a few files: keep the reports, pack the logs.
(cd "$OUT" && tar czf logs.tar.gz --remove-files $(ls | grep -v -e '^forward_.*\.\(md\|json\)$' -e '^logs.tar.gz$'))
exit $status
