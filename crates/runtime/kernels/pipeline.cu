// pipeline.cu: the fluxc runtime's denoising-loop kernels
// (crates/runtime/src/pipeline.rs launches them inside the pipeline's CUDA
// graph). Each comes in three instantiations, for latents in f32, bf16 and
// f16 (suffixes _f32, _bf16, _f16), and indexes with `long long`.
//
// fluxc_pipe_init_*: the starting latents, packed [B, (H/2)(W/2), 4C].
//   With *use_given != 0 they are copied from `given` (already packed);
//   otherwise each is a standard normal sample rounded to the latent dtype.
//   The sample of latent element (b, c, y, x) of the unpacked [B, C, H, W]
//   tensor depends only on the seed and on its NCHW index i, so the noise
//   does not depend on the packing or the launch shape: Philox-4x32-10
//   (key = the 64-bit seed, counter = (i / 4, 0, 0) as 64 bits) gives four
//   32-bit words; element i takes pair (i % 4) / 2 of them through
//   Box-Muller, the cosine branch for even i, the sine branch for odd i.
//   The seed and the flag are read from device memory, so one recorded
//   graph serves every seed.
//
// fluxc_pipe_euler_*: the flow-matching Euler step as diffusers'
//   FlowMatchEulerDiscreteScheduler.step computes it on CUDA:
//   `(sample.float() + dt * model_output).to(dtype)`, where `dt * v` is a
//   tensor of the latent dtype (the f32 0-dim dt meets v of that dtype):
//   p = round(dt * v), x = round(float(x) + p), each operation rounded once
//   (no fused multiply-add).
//
// fluxc_pipe_to_vae_*: `_unpack_latents` then `latents / scaling_factor +
//   shift_factor` (as PyTorch computes a division by a Python scalar on
//   CUDA: multiplication by the f32 reciprocal; each op rounded to the
//   dtype), written channels-last [B, H, W, C] into the VAE's input.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define FLUXC_PIPE_THREADS 256

namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// `v` rounded to T and back.
template <typename T> __device__ __forceinline__ float round_to(float v) {
    return to_f(from_f<T>(v));
}

// Philox-4x32-10 (Salmon et al., SC'11): ten rounds of two 32x32->64-bit
// multiplications, the key bumped by the Weyl constants between rounds.
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, unsigned k0, unsigned k1) {
    const unsigned m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
    const unsigned w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        const unsigned hi0 = __umulhi(m0, c.x), lo0 = m0 * c.x;
        const unsigned hi1 = __umulhi(m1, c.z), lo1 = m1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
        k0 += w0;
        k1 += w1;
    }
    return c;
}

// The standard normal sample of element `i` for `seed` (see the top).
__device__ __forceinline__ float gaussian(unsigned long long seed, long long i) {
    const unsigned long long group = (unsigned long long)i >> 2;
    const uint4 r = philox4x32_10(
        make_uint4((unsigned)group, (unsigned)(group >> 32), 0u, 0u),
        (unsigned)seed, (unsigned)(seed >> 32));
    const int lane = (int)(i & 3);
    const unsigned a = lane < 2 ? r.x : r.z;
    const unsigned b = lane < 2 ? r.y : r.w;
    // 24-bit uniforms: u1 in (0, 1] (log is finite), u2 in [0, 1).
    const float scale = 1.0f / 16777216.0f;
    const float u1 = __fmul_rn((float)(a >> 8) + 1.0f, scale);
    const float u2 = __fmul_rn((float)(b >> 8), scale);
    const float radius = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    return radius * ((lane & 1) ? s : c);
}

template <typename T>
__device__ void init_latents(T* latents, const T* given, const unsigned long long* seed,
                             const int* use_given, long long batch, long long channels,
                             long long height, long long width) {
    const long long w2 = width / 2;
    const long long tokens = (height / 2) * w2;
    const long long features = 4 * channels;
    const long long n = batch * tokens * features;
    const bool copy = *use_given != 0;
    const unsigned long long key = *seed;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < n;
         p += (long long)gridDim.x * blockDim.x) {
        if (copy) {
            latents[p] = given[p];
            continue;
        }
        const long long f = p % features;
        const long long token = (p / features) % tokens;
        const long long b = p / (features * tokens);
        const long long ch = f / 4, dy = (f / 2) % 2, dx = f % 2;
        const long long y = 2 * (token / w2) + dy, x = 2 * (token % w2) + dx;
        const long long nchw = ((b * channels + ch) * height + y) * width + x;
        latents[p] = from_f<T>(gaussian(key, nchw));
    }
}

template <typename T>
__device__ void euler(T* latents, const T* velocity, float dt, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float step = round_to<T>(__fmul_rn(dt, to_f(velocity[i])));
        latents[i] = from_f<T>(__fadd_rn(to_f(latents[i]), step));
    }
}

template <typename T>
__device__ void to_vae(const T* latents, T* z, float inv_scale, float shift, long long batch,
                       long long channels, long long height, long long width) {
    const long long w2 = width / 2;
    const long long tokens = (height / 2) * w2;
    const long long n = batch * height * width * channels;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n;
         q += (long long)gridDim.x * blockDim.x) {
        const long long ch = q % channels;
        const long long x = (q / channels) % width;
        const long long y = (q / (channels * width)) % height;
        const long long b = q / (channels * width * height);
        const long long token = (y / 2) * w2 + x / 2;
        const long long f = 4 * ch + 2 * (y % 2) + x % 2;
        const float v = to_f(latents[(b * tokens + token) * 4 * channels + f]);
        const float scaled = round_to<T>(__fmul_rn(v, inv_scale));
        z[q] = from_f<T>(__fadd_rn(scaled, shift));
    }
}

}  // namespace

#define FLUXC_PIPE_KERNELS(SUFFIX, T)                                                           \
    extern "C" __global__ void __launch_bounds__(FLUXC_PIPE_THREADS)                            \
        fluxc_pipe_init_##SUFFIX(T* latents, const T* given, const unsigned long long* seed,   \
                                 const int* use_given, long long batch, long long channels,    \
                                 long long height, long long width) {                          \
        init_latents<T>(latents, given, seed, use_given, batch, channels, height, width);      \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(FLUXC_PIPE_THREADS)                            \
        fluxc_pipe_euler_##SUFFIX(T* latents, const T* velocity, float dt, long long n) {      \
        euler<T>(latents, velocity, dt, n);                                                     \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(FLUXC_PIPE_THREADS)                            \
        fluxc_pipe_to_vae_##SUFFIX(const T* latents, T* z, float inv_scale, float shift,       \
                                   long long batch, long long channels, long long height,      \
                                   long long width) {                                          \
        to_vae<T>(latents, z, inv_scale, shift, batch, channels, height, width);               \
    }

FLUXC_PIPE_KERNELS(f32, float)
FLUXC_PIPE_KERNELS(bf16, __nv_bfloat16)
FLUXC_PIPE_KERNELS(f16, __half)
