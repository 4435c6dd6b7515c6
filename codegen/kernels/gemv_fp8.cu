// gemv_fp8.cu: an fp8 linear over one input row,
//   y[j] = bf16((sum_k x8[k] * w8[j, k]) * x_scale[0] * w_scale[j] + b[j])
// for e4m3 x8 [K] and w8 [N, K], f32 scales (w_scale per output row, or one
// for the whole weight), bf16 b [N] and y [N], accumulating in f32: the
// IR's `scaled_linear` with one input row (codegen/src/gemv.rs renders it;
// the placeholders are {{NAME}}, {{K}}, {{HAS_BIAS}} and {{W_SCALE_PER_ROW}}).
//
// FLUX's stacked modulation product in fp8: 3.2 G weights that a one-row
// product only streams, so an e4m3 weight halves its time against the bf16
// kernel (gemv.cu, whose structure this is): each warp owns one output row
// and streams it with 16-byte loads (16 weights), a batch of a lane's loads
// written before its multiplies; x8 (K bytes) is read through L1. Pairs of
// e4m3 become f16 pairs in one conversion, then f32 (exact: e4m3 values are
// f16 values). The sum over a row is per lane (in the order of its chunks),
// then across the warp by butterfly shuffles; both scales and the bias are
// applied in f32 before the one rounding to bf16, as cuBLASLt's fp8 GEMMs
// with a bias epilogue do.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// The four e4m3 values of `bytes` (lowest byte first) as f32.
static __device__ __forceinline__ void gemv_fp8_unpack4(unsigned int bytes, float* out) {
    unsigned int lo, hi;
    asm("{\n.reg .b16 l, h;\n"
        "mov.b32 {l, h}, %2;\n"
        "cvt.rn.f16x2.e4m3x2 %0, l;\n"
        "cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(bytes));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&lo));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    out[0] = a.x;
    out[1] = a.y;
    out[2] = b.x;
    out[3] = b.y;
}

extern "C" __global__ void __launch_bounds__(256)
{{NAME}}(const unsigned char* __restrict__ x, const float* __restrict__ x_scale,
         const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
         const __nv_bfloat16* __restrict__ b, __nv_bfloat16* __restrict__ y, int n) {
    constexpr int K = {{K}};
    static_assert(K % 16 == 0, "rows are read in 16-byte chunks");
    constexpr int CHUNKS = K / 16;
    constexpr int CHUNKS_PER_LANE = (CHUNKS + 31) / 32;
    const int lane = threadIdx.x & 31;
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (row >= n) return;

    // Loads in batches of BATCH chunks per lane (the whole row of K = 3072
    // in one batch), so the registers stay bounded for any K.
    constexpr int BATCH = CHUNKS_PER_LANE < 12 ? CHUNKS_PER_LANE : 12;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* wrow = reinterpret_cast<const uint4*>(w + (long long)row * K);
    float acc = 0.0f;
    for (int j0 = 0; j0 < CHUNKS_PER_LANE; j0 += BATCH) {
        uint4 wv[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int c = lane + 32 * (j0 + j);
            wv[j] = (c < CHUNKS) ? __ldg(wrow + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int c = lane + 32 * (j0 + j);
            const uint4 xc = (c < CHUNKS) ? __ldg(xv + c) : make_uint4(0, 0, 0, 0);
            const unsigned int xw[4] = {xc.x, xc.y, xc.z, xc.w};
            const unsigned int ww[4] = {wv[j].x, wv[j].y, wv[j].z, wv[j].w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float xf[4], wf[4];
                gemv_fp8_unpack4(xw[e], xf);
                gemv_fp8_unpack4(ww[e], wf);
#pragma unroll
                for (int q = 0; q < 4; ++q) acc = fmaf(xf[q], wf[q], acc);
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) {
#if {{W_SCALE_PER_ROW}}
        const float ws = w_scale[row];
#else
        const float ws = w_scale[0];
#endif
        float v = acc * x_scale[0] * ws;
#if {{HAS_BIAS}}
        v += __bfloat162float(b[row]);
#endif
        y[row] = __float2bfloat16_rn(v);
    }
}
