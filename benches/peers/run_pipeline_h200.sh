#!/usr/bin/env bash
# The whole text-to-image pipeline on the H200 machine, next to diffusers'
# FluxPipeline, from the repository root. Bring .dev/ (benches/peers/
# prepare.sh, then one compiled pipeline per variant in
# .dev/art/pipe-$MODEL-$variant, e.g.
#   fluxc compile .dev/models/pipe-schnell-fp8.toml -o .dev/art/pipe-schnell-fp8)
# and the diffusers wheels in .whl/.
#
# Steps: benches/peers/pipeline_reference.py (random weights, embeddings and
# initial latents; diffusers' fp32 and bf16 pipelines), `fluxc generate` of
# every variant in VARIANTS from the same latents (one CUDA graph; --replays
# timed), then benches/peers/compare_pipeline.py: seconds per image, final
# latents' error vs fp32 against diffusers' own bf16 error, image PSNR.
# Reports go to $OUT (default ./out), logs packed in $OUT/logs.tar.gz.
set -uo pipefail
OUT=${OUT:-out}
MODEL=${MODEL:-schnell}
VARIANTS=${VARIANTS:-fp8 bf16}
TEXT_TOKENS=${TEXT_TOKENS:-512}
WORK=${WORK:-/tmp/fluxc-pipe}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
# cuDNN for artifacts compiled with cudnn_convolutions: the one in PyTorch's wheel.
cudnn_lib=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)
[[ -n "$cudnn_lib" ]] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$cudnn_lib
export FLUXC_CUDA_INCLUDE=/usr/local/cuda/include:/usr/local/cuda/include/cccl
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2> /dev/null
export PYTHONPATH=/tmp/site

status=0
python3 benches/peers/pipeline_reference.py --variant "$MODEL" --text-tokens "$TEXT_TOKENS" --out "$WORK" \
    > "$OUT/pipeline_reference.log" 2>&1 || { status=1; tail -20 "$OUT/pipeline_reference.log"; }
compared=()
for v in $VARIANTS; do
    if .dev/bin/fluxc generate ".dev/art/pipe-$MODEL-$v" --weights "$WORK/pipe" \
        --embeds "$WORK/embeds.safetensors" --latents-in "$WORK/latents.safetensors" \
        --latents-out "$WORK/latents_$v.safetensors" -o "$OUT/fluxc_$v.png" --replays 5 \
        > "$OUT/generate_$v.log" 2>&1; then
        compared+=(--fluxc "$v" "$WORK/latents_$v.safetensors" "$OUT/fluxc_$v.png" "$OUT/generate_$v.log")
    else
        status=1
    fi
    tail -4 "$OUT/generate_$v.log"
done
if (( ${#compared[@]} )) && [[ -e "$WORK/reference.json" ]]; then
    python3 benches/peers/compare_pipeline.py --dir "$WORK" "${compared[@]}" --commit "${COMMIT:-$(cat .dev/commit 2>/dev/null || echo unknown)}" \
        --command "MODEL=$MODEL VARIANTS='$VARIANTS' TEXT_TOKENS=$TEXT_TOKENS benches/peers/run_pipeline_h200.sh" \
        --name "pipeline_${MODEL}_1024_t$TEXT_TOKENS" --out "$OUT" || status=1
fi
(cd "$OUT" && tar czf logs.tar.gz --remove-files $(ls | grep '\.log$'))
exit $status
