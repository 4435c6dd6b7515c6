// fluxc kernel prelude: included once at the top of every generated
// kernels.cu. Loads and stores convert between storage types and f32, in
// which all arithmetic happens; math helpers follow the IR interpreter's
// definitions (ir/src/interp/kernels.rs).
// Helpers unused by a given artifact are fine.
#pragma nv_diag_suppress 177
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define FX_DEVICE static __device__ __forceinline__

FX_DEVICE float fx_load(const float* p, long long i) { return p[i]; }
FX_DEVICE float fx_load(const __nv_bfloat16* p, long long i) { return __bfloat162float(p[i]); }
FX_DEVICE float fx_load(const __half* p, long long i) { return __half2float(p[i]); }

FX_DEVICE float fx_load(const __nv_fp8_e4m3* p, long long i) { return float(p[i]); }
FX_DEVICE float fx_load(const __nv_fp8_e5m2* p, long long i) { return float(p[i]); }

FX_DEVICE void fx_store(float* p, long long i, float v) { p[i] = v; }
FX_DEVICE void fx_store(__nv_bfloat16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }
FX_DEVICE void fx_store(__half* p, long long i, float v) { p[i] = __float2half_rn(v); }
// fp8 stores round to nearest even and saturate to the largest finite value
// (the constructors use __NV_SATFINITE), as the IR's `quantize` does.
FX_DEVICE void fx_store(__nv_fp8_e4m3* p, long long i, float v) { p[i] = __nv_fp8_e4m3(v); }
FX_DEVICE void fx_store(__nv_fp8_e5m2* p, long long i, float v) { p[i] = __nv_fp8_e5m2(v); }

// Rounding to a storage type and back (the IR's `cast`).
FX_DEVICE float fx_round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
FX_DEVICE float fx_round_f16(float v) { return __half2float(__float2half_rn(v)); }
FX_DEVICE float fx_round_f8e4m3(float v) { return float(__nv_fp8_e4m3(v)); }
FX_DEVICE float fx_round_f8e5m2(float v) { return float(__nv_fp8_e5m2(v)); }

FX_DEVICE float fx_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
FX_DEVICE float fx_silu(float x) { return x * fx_sigmoid(x); }
FX_DEVICE float fx_gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// The hardware tanh (one SFU instruction, absolute error about 2^-11), used
// for values the IR types as bf16 or f16: for bf16 its error is below the
// value's own rounding (half an ulp is 2^-9 relative); for f16 (2^-12) it is
// not, a trade the GELU of an f16 model can afford. f32 values keep tanhf.
FX_DEVICE float fx_tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// 0.5·x·(1 + tanh(k·(x + 0.044715·x³))) regrouped as h + h·tanh(x·(k + k·0.044715·x²))
// with h = 0.5·x: three multiplies, two FMAs and the tanh instead of five
// multiplies, an FMA and two adds (the single blocks' GELU kernel is bound
// by instruction issue). Same value up to f32 rounding, far below the tanh's
// own error.
FX_DEVICE float fx_gelu_tanh_approx(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    const float k3 = 0.7978845608028654f * 0.044715f;
    const float h = 0.5f * x;
    const float inner = x * fmaf(x * x, k3, k);
    return fmaf(h, fx_tanh_approx(inner), h);
}

// Sum over the `width` consecutive lanes of a warp that share a row
// (width is a power of two, at most 32).
FX_DEVICE float fx_group_sum(float v, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset, width);
    }
    return v;
}

// Sum over the `threads` threads of a block that share one row, when a row
// spans several warps (threads is a multiple of 32, rows never share a
// warp). `scratch` holds one float per warp of the block.
FX_DEVICE float fx_row_sum(float v, int threads, float* scratch) {
    v = fx_group_sum(v, 32);
    const int warp = threadIdx.x / 32;
    const int warps_per_row = threads / 32;
    const int first = (warp / warps_per_row) * warps_per_row;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps_per_row; ++w) total += scratch[first + w];
    return total;
}

// Maximum over the `width` consecutive lanes of a warp that share a row.
FX_DEVICE float fx_group_max(float v, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset, width));
    }
    return v;
}

// Maximum over the threads of a block that share one row (see fx_row_sum).
FX_DEVICE float fx_row_max(float v, int threads, float* scratch) {
    v = fx_group_max(v, 32);
    const int warp = threadIdx.x / 32;
    const int warps_per_row = threads / 32;
    const int first = (warp / warps_per_row) * warps_per_row;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[warp] = v;
    __syncthreads();
    float m = scratch[first];
    for (int w = 1; w < warps_per_row; ++w) m = fmaxf(m, scratch[first + w]);
    return m;
}

// 16-byte vector access: N consecutive elements of type T at once, when the
// kernel has proven the address aligned (buffers are 256-byte aligned and
// the element index a multiple of N).
template <int N, typename T>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) fx_vec {
    T x[N];
};
template <int N, typename T>
FX_DEVICE fx_vec<N, T> fx_vload(const T* p, long long i) {
    return *reinterpret_cast<const fx_vec<N, T>*>(p + i);
}
template <int N>
FX_DEVICE float fx_vget(const fx_vec<N, float>& r, int v) { return r.x[v]; }
template <int N>
FX_DEVICE float fx_vget(const fx_vec<N, __nv_bfloat16>& r, int v) { return __bfloat162float(r.x[v]); }
template <int N>
FX_DEVICE float fx_vget(const fx_vec<N, __half>& r, int v) { return __half2float(r.x[v]); }
template <int N>
FX_DEVICE float fx_vget(const fx_vec<N, __nv_fp8_e4m3>& r, int v) { return float(r.x[v]); }
template <int N>
FX_DEVICE float fx_vget(const fx_vec<N, __nv_fp8_e5m2>& r, int v) { return float(r.x[v]); }
template <int N, typename T>
FX_DEVICE void fx_vstore(T* p, long long i, const float* y) {
    fx_vec<N, T> r;
    #pragma unroll
    for (int v = 0; v < N; ++v) fx_store(r.x, v, y[v]);
    *reinterpret_cast<fx_vec<N, T>*>(p + i) = r;
}
// fp8 vectors convert two values per instruction (the conversion unit runs
// at a quarter of the FMA rate; one value per instruction would double its
// work), with the same rounding as fx_store.
template <int N, typename T>
FX_DEVICE void fx_vstore_fp8(T* p, long long i, const float* y, __nv_fp8_interpretation_t kind) {
    if constexpr (N % 2 != 0) {
        fx_vec<N, T> r;
        #pragma unroll
        for (int v = 0; v < N; ++v) fx_store(r.x, v, y[v]);
        *reinterpret_cast<fx_vec<N, T>*>(p + i) = r;
    } else {
        fx_vec<N / 2, __nv_fp8x2_storage_t> r;
        #pragma unroll
        for (int v = 0; v < N / 2; ++v) {
            r.x[v] = __nv_cvt_float2_to_fp8x2(make_float2(y[2 * v], y[2 * v + 1]), __NV_SATFINITE, kind);
        }
        *reinterpret_cast<fx_vec<N / 2, __nv_fp8x2_storage_t>*>(p + i) = r;
    }
}
template <int N>
FX_DEVICE void fx_vstore(__nv_fp8_e4m3* p, long long i, const float* y) {
    fx_vstore_fp8<N>(p, i, y, __NV_E4M3);
}
template <int N>
FX_DEVICE void fx_vstore(__nv_fp8_e5m2* p, long long i, const float* y) {
    fx_vstore_fp8<N>(p, i, y, __NV_E5M2);
}

// The IR's quantize before its fp8 rounding: x times s's reciprocal,
// rounded to f32 (__frcp_rn is correctly rounded, as the interpreter's
// 1 / s). The reciprocal is computed once for all the elements that share
// s (the compiler merges the identical calls); a division per element
// would cost a quarter-rate reciprocal and a fix-up sequence each.
FX_DEVICE float fx_mul_rcp(float x, float s) { return __fmul_rn(x, __frcp_rn(s)); }
