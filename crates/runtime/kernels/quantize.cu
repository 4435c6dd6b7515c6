// quantize.cu: the fluxc runtime's fp8 weight quantization, run once at
// load time (crates/runtime/src/quantize.rs launches it).
//
// Deriving fp8 weights on the host in f32 is far too slow for a 12-billion-
// parameter model, so the runtime uploads the source weight (bf16 or f32)
// and computes here exactly what `fluxc_checkpoint` defines for
// `WeightSource::Fp8Scale` and `WeightSource::Fp8Quantize`, bit for bit:
//
//   amax  = max |x| over one row of the last axis (per row), or over the
//           whole tensor (one row of amaxes reduced again);
//   scale = fmaxf(amax, 1e-12f) / max_finite   (448 for E4M3, 57344 for E5M2)
//   q     = fp8(x * (1 / scale)), the reciprocal rounded to f32, then
//           round-to-nearest-even, saturating to finite.
//
// The division, the reciprocal and the product are IEEE round-to-nearest
// (__fdiv_rn, __frcp_rn, __fmul_rn, whatever the compile flags), and the
// conversion is the hardware's cvt.rn.satfinite, which the
// host encoder (clamp to ±max, then round-to-nearest-even) matches. A max is
// exact and does not depend on the order it is taken in (fmaxf skips NaN as
// Rust's f32::max does), so the reductions give the same bits whatever the
// launch shape.
//
// Every kernel runs in blocks of FLUXC_QUANT_THREADS threads (block_max
// relies on it) and loops grid-stride, so any grid size is correct.

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#define FLUXC_QUANT_THREADS 256

namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The max of `v` over the block; valid in thread 0. Ends with a barrier so
// the caller may call it again (the shared array is reused).
__device__ float block_max(float v) {
    __shared__ float warp_max[FLUXC_QUANT_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < FLUXC_QUANT_THREADS / 32 ? warp_max[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    __syncthreads();
    return v;
}

// The dequantization scale of a row (or tensor) whose max |x| is `amax`.
__device__ __forceinline__ float scale_of(float amax, float max_finite) {
    return __fdiv_rn(fmaxf(amax, 1e-12f), max_finite);
}

// One block per row (grid-stride over rows): out[r] = max |x[r, :]|, or the
// row's scale when `as_scale`.
template <typename T>
__device__ void row_amax(const T* x, float* out, long long rows, long long cols, int as_scale,
                         float max_finite) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * cols;
        float m = 0.0f;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            m = fmaxf(m, fabsf(to_float(row[c])));
        }
        m = block_max(m);
        if (threadIdx.x == 0) out[r] = as_scale ? scale_of(m, max_finite) : m;
    }
}

// out[i] = fp8(x[i] * (1 / scale)), with the scale of x's row (per_row) or scales[0].
template <typename T>
__device__ void quantize(const T* x, const float* scales, __nv_fp8_storage_t* out, long long rows,
                         long long cols, int per_row, int e5m2) {
    const long long n = rows * cols;
    const __nv_fp8_interpretation_t kind = e5m2 ? __NV_E5M2 : __NV_E4M3;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float s = scales[per_row ? i / cols : 0];
        out[i] = __nv_cvt_float_to_fp8(__fmul_rn(to_float(x[i]), __frcp_rn(s)), __NV_SATFINITE, kind);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLUXC_QUANT_THREADS)
fluxc_quant_row_amax_bf16(const __nv_bfloat16* x, float* out, long long rows, long long cols,
                          int as_scale, float max_finite) {
    row_amax(x, out, rows, cols, as_scale, max_finite);
}

extern "C" __global__ void __launch_bounds__(FLUXC_QUANT_THREADS)
fluxc_quant_row_amax_f32(const float* x, float* out, long long rows, long long cols,
                         int as_scale, float max_finite) {
    row_amax(x, out, rows, cols, as_scale, max_finite);
}

// One block: scale[0] = the scale of the largest of `rows` row amaxes.
extern "C" __global__ void __launch_bounds__(FLUXC_QUANT_THREADS)
fluxc_quant_tensor_scale(const float* row_amax, float* scale, long long rows, float max_finite) {
    float m = 0.0f;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) m = fmaxf(m, row_amax[r]);
    m = block_max(m);
    if (threadIdx.x == 0) scale[0] = scale_of(m, max_finite);
}

extern "C" __global__ void __launch_bounds__(FLUXC_QUANT_THREADS)
fluxc_quant_values_bf16(const __nv_bfloat16* x, const float* scales, __nv_fp8_storage_t* out,
                        long long rows, long long cols, int per_row, int e5m2) {
    quantize(x, scales, out, rows, cols, per_row, e5m2);
}

extern "C" __global__ void __launch_bounds__(FLUXC_QUANT_THREADS)
fluxc_quant_values_f32(const float* x, const float* scales, __nv_fp8_storage_t* out,
                       long long rows, long long cols, int per_row, int e5m2) {
    quantize(x, scales, out, rows, cols, per_row, e5m2);
}
