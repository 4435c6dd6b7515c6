// gemv.cu: a linear over one input row, y = x · wᵀ (+ b), for bf16 x [K],
// w [N, K], b [N] and y [N], accumulating in f32 (codegen/src/gemv.rs
// renders it; the placeholders are {{NAME}}, {{K}} and {{HAS_BIAS}}).
//
// FLUX's modulation linears (one row: the conditioning vector) read 6.5 GB
// of weights per forward and compute almost nothing, so they are bound by
// memory alone; cuBLASLt's GEMM kernels tile the rows they do not have and
// leave most of the bandwidth unused at these shapes. Here each warp owns
// ROWS consecutive output rows (1: measured faster on the H200 than 2 or 4,
// more warps in flight) and streams them with 16-byte loads, a batch of a
// lane's loads written before its multiplies (ptxas schedules them); x (K
// bf16) is read through L1. The stacked FLUX modulation (6.5 GB) runs at
// about 4.6 TB/s.
// The sum over a row is per lane (in the order of its chunks), then across
// the warp by butterfly shuffles; the bias is added in f32 before the one
// rounding to bf16, as cuBLASLt's bias epilogue does.
#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256)
{{NAME}}(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
         const __nv_bfloat16* __restrict__ b, __nv_bfloat16* __restrict__ y, int n) {
    constexpr int K = {{K}};
    static_assert(K % 8 == 0, "rows are read in 16-byte chunks");
    constexpr int CHUNKS = K / 8;
    constexpr int CHUNKS_PER_LANE = (CHUNKS + 31) / 32;
    constexpr int ROWS = 1;
    const int lane = threadIdx.x & 31;
    const int first_row = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * ROWS;
    if (first_row >= n) return;

    // Loads in batches of BATCH chunks per lane and row (the whole row of
    // K = 3072 in one batch), so the registers stay bounded for any K.
    constexpr int BATCH = CHUNKS_PER_LANE < 12 ? CHUNKS_PER_LANE : 12;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
    for (int j0 = 0; j0 < CHUNKS_PER_LANE; j0 += BATCH) {
        uint4 wv[ROWS][BATCH];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            // A missing last row rereads the one before (never stored).
            const int row = min(first_row + r, n - 1);
            const uint4* wrow = reinterpret_cast<const uint4*>(w + (long long)row * K);
#pragma unroll
            for (int j = 0; j < BATCH; ++j) {
                const int c = lane + 32 * (j0 + j);
                wv[r][j] = (c < CHUNKS) ? __ldg(wrow + c) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int c = lane + 32 * (j0 + j);
            const uint4 xc = (c < CHUNKS) ? __ldg(xv + c) : make_uint4(0, 0, 0, 0);
            const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xc);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&wv[r][j]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 xf = __bfloat1622float2(xp[e]);
                    const float2 wf = __bfloat1622float2(wp[e]);
                    acc[r] = fmaf(xf.x, wf.x, acc[r]);
                    acc[r] = fmaf(xf.y, wf.y, acc[r]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const int row = first_row + r;
            if (row < n) {
                float v = acc[r];
#if {{HAS_BIAS}}
                v += __bfloat162float(b[row]);
#endif
                y[row] = __float2bfloat16_rn(v);
            }
        }
    }
}
