#!/usr/bin/env bash
# Compiles, on the dev machine, the pipelines benches/peers/run_pipeline_h200.sh
# runs: one per variant in .dev/art/pipe-$MODEL-$variant, from model files
# written to .dev/models/. Run benches/peers/prepare.sh first (it builds
# .dev/bin/fluxc).
#
#   bf16     transformer and VAE decoder in bf16
#   fp8      transformer in fp8 per row with fast accumulation and fp8
#            attention; VAE decoder in bf16
#            (both with models/flux-vae.toml's cuDNN convolutions; reports
#            before 2026-11-29's f807056 call these fp8-cudnn, bf16-cudnn)
#   fp8-im2col, bf16-im2col  the VAE decoder's convolutions as fluxc's
#            im2col kernels and cuBLASLt GEMMs (`cudnn_convolutions = false`)
#   fp8-vae  fp8-im2col with the VAE decoder's up-block convolutions in fp8
#            per row too (im2col patches quantized per patch row, weights
#            per output channel): half the patch bytes and twice the GEMM
#            rate, at a cost in image error the report shows (PSNR).
#            Measured on the H200 (benches/results/2026-11-29_9be2661_pipeline_schnell_1024_t512.md):
#            no faster than fp8 (0.356 against 0.357 s; the fused im2col +
#            quantize row kernels are slower than the bf16 im2col kernels
#            they replace) at 31.5 dB instead of 47.7: not worth it as it is
#   <variant>-per-step  that variant with `hoist_conditioning = false`: the
#            transformer computes its modulation vectors every step (reading
#            their 6.4 GB of weights each time) instead of once per run
#
# MODEL (schnell or dev), TEXT_TOKENS (default 512) and VARIANTS (default
# "fp8 bf16") as in run_pipeline_h200.sh; 1024×1024.
set -euo pipefail
MODEL=${MODEL:-schnell}
TEXT_TOKENS=${TEXT_TOKENS:-512}
VARIANTS=${VARIANTS:-fp8 bf16}
test -x .dev/bin/fluxc || { echo "run benches/peers/prepare.sh first" >&2; exit 2; }
mkdir -p .dev/models .dev/art
case $MODEL in
    schnell) schedule='scheduler = "schnell"'$'\n''steps = 4' ;;
    dev) schedule='scheduler = "dev"'$'\n''steps = 28'$'\n''guidance_scale = 3.5' ;;
    *) echo "unknown MODEL $MODEL" >&2; exit 2 ;;
esac
for variant in $VARIANTS; do
    hoist=true
    [[ $variant == *-per-step ]] && hoist=false
    case ${variant%-per-step} in
        bf16) fp8=off; vae=preset ;;
        fp8) fp8=dynamic-row; vae=preset ;;
        bf16-im2col) fp8=off; vae=im2col ;;
        fp8-im2col) fp8=dynamic-row; vae=im2col ;;
        fp8-vae) fp8=dynamic-row; vae=fp8 ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    transformer=pipe-$MODEL-$variant-transformer.toml
    sed -e "s/^text_tokens = .*/text_tokens = $TEXT_TOKENS/" "models/flux-$MODEL.toml" > ".dev/models/$transformer"
    if [[ $fp8 != off ]]; then
        printf '\n[passes]\nfp8 = "%s"\nfp8_fast_accumulation = true\nfp8_attention = true\n' "$fp8" >> ".dev/models/$transformer"
    fi
    vae_file=pipe-$MODEL-$variant-vae.toml
    # flux-vae.toml ends in its [passes] table: keys appended land there.
    grep -q '^cudnn_convolutions = true$' models/flux-vae.toml
    if [[ $vae == preset ]]; then
        cp models/flux-vae.toml ".dev/models/$vae_file"
    else
        sed -e 's/^cudnn_convolutions = true$/cudnn_convolutions = false/' models/flux-vae.toml > ".dev/models/$vae_file"
    fi
    if [[ $vae == fp8 ]]; then
        printf 'fp8 = "dynamic-row"\nfp8_fast_accumulation = true\nfp8_include = ["decoder.up_blocks.*"]\n' >> ".dev/models/$vae_file"
    fi
    cat > ".dev/models/pipe-$MODEL-$variant.toml" <<TOML
[model]
name = "$MODEL-pipe-$variant"
architecture = "flux-pipeline"

[pipeline]
transformer = "$transformer"
vae = "$vae_file"
$schedule
hoist_conditioning = $hoist

[shapes]
height = 1024
width = 1024
text_tokens = $TEXT_TOKENS
TOML
    rm -rf ".dev/art/pipe-$MODEL-$variant"
    .dev/bin/fluxc compile ".dev/models/pipe-$MODEL-$variant.toml" -o ".dev/art/pipe-$MODEL-$variant"
done
