#!/usr/bin/env bash
# Session 5's device call (commit in .dev/commit): GPU tests, generated-kernel
# timings (old vs new emitter), the schnell pipeline (fp8, fp8-vae, bf16),
# then the dev pipeline (fp8, bf16) with what time is left.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export FLUXC_CUDA_INCLUDE=/usr/local/cuda/include:/usr/local/cuda/include/cccl
L=$OUT/logs; mkdir -p $L
.dev/bin/gpu-fp8-tests --nocapture --test-threads=1 > $L/gpu_fp8_tests.log 2>&1; echo "fp8 tests rc $?"
.dev/bin/gpu-tests --nocapture --test-threads=1 > $L/gpu_tests.log 2>&1; echo "gpu tests rc $?"
grep -E "^test |test result|tiny-vae bf16 fp8|tiny-vae bf16:" $L/gpu_tests.log
python3 benches/kernels/generated.py .dev/art/flux-vae k0_,k3_,k9_,k12_,k14_,k17_,k20_,k22_,k25_,k28_ .dev/old/vae_kernels.cu > $L/vae_im2col.log 2>&1; tail -14 $L/vae_im2col.log
python3 benches/kernels/generated.py .dev/art/pipe-schnell-fp8-vae/vae k9_,k10_,k13_,k15_,k18_,k21_,k24_,k27_,k30_ > $L/vae_fp8_im2col.log 2>&1; tail -12 $L/vae_fp8_im2col.log
python3 benches/kernels/generated.py .dev/art/schnell-1024x1024-t512-fp8-row-fast-attn k22_ .dev/old/fwd_kernels.cu > $L/gelu.log 2>&1; tail -4 $L/gelu.log
echo "at ${SECONDS}s: schnell pipeline"
mkdir -p $OUT/s
OUT=$OUT/s MODEL=schnell VARIANTS="fp8 fp8-vae bf16" bash benches/peers/run_pipeline_h200.sh > $L/pipeline_schnell_console.log 2>&1; echo "schnell rc $?"
grep -A8 "^| system" $OUT/s/*.md
(cd $OUT && tar czf schnell.tar.gz s && rm -rf s)
left=$((440 - SECONDS))
echo "at ${SECONDS}s: dev pipeline with ${left}s"
if (( left > 150 )); then
    mkdir -p $OUT/d
    OUT=$OUT/d MODEL=dev VARIANTS="fp8 bf16" timeout $left bash benches/peers/run_pipeline_h200.sh > $L/pipeline_dev_console.log 2>&1; echo "dev rc $?"
    grep -A8 "^| system" $OUT/d/*.md
    (cd $OUT && tar czf dev.tar.gz d && rm -rf d)
fi
(cd $OUT && tar czf logs.tar.gz logs && rm -rf logs)
echo "done at ${SECONDS}s"
