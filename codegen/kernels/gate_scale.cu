// gate_scale.cu: the per-forward operands of a gated residual folded into
// an fp8 GEMM (codegen/src/gated.rs): for each output channel j,
//   scale[j] = w_scale[j] · gate[j]   (f32: cuBLASLt's per-channel scale)
//   bias[j]  = bf16(b[j] · gate[j])   (the GEMM's bias epilogue)
// so that the GEMM's `acc·x_scale·scale + bias + C` with C = the residual
// is `r + gate ⊙ (acc·x_scale·w_scale + b)`. One thread per channel.
#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256)
gate_scale(const float* __restrict__ w_scale, const __nv_bfloat16* __restrict__ b,
           const __nv_bfloat16* __restrict__ gate, float* __restrict__ scale,
           __nv_bfloat16* __restrict__ bias, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const float g = __bfloat162float(gate[j]);
    scale[j] = w_scale[j] * g;
    bias[j] = __float2bfloat16_rn(__bfloat162float(b[j]) * g);
}
