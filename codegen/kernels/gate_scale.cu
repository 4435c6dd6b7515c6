// gate_scale.cu: the per-forward operands of gated residuals folded into
// fp8 GEMMs (codegen/src/gated.rs), several residuals per launch: for
// residual r (blockIdx.y) and each of its output channels j,
//   scale_r[j] = w_scale_r[j] * gate_r[j]   (f32: cuBLASLt's per-channel scale)
//   bias_r[j]  = bf16(b_r[j] * gate_r[j])   (the GEMM's bias epilogue)
// so that the GEMM's `acc * x_scale * scale + bias + C` with C = the residual
// is `r + gate (.) (acc * x_scale * w_scale + b)`. One thread per channel.
// Rendered by gated.rs, which replaces these placeholders (each written in
// the source as its name in double curly braces):
//   NAME    kernel symbol, e.g. gate_scale_64x3072
//   PARAMS  five pointers per residual (w_scale, b, gate, scale, bias)
//   CASES   one switch case per residual, binding them and its channel count
#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256)
{{NAME}}({{PARAMS}}) {
    const float* w_scale;
    const __nv_bfloat16* b;
    const __nv_bfloat16* gate;
    float* scale;
    __nv_bfloat16* bias;
    int n;
    switch (blockIdx.y) {
{{CASES}}
        default:
            return;
    }
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const float g = __bfloat162float(gate[j]);
    scale[j] = w_scale[j] * g;
    bias[j] = __float2bfloat16_rn(__bfloat162float(b[j]) * g);
}
