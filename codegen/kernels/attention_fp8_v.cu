// fluxc: V for the fp8 attention kernel (attention_fp8.cu): quantized to
// e4m3 by its per-tensor scale, transposed and key-permuted.
//
// Rendered by codegen/src/attention_fp8.rs (placeholder: NAME).
//
//   vt[b, h, d, 16 q + L] = e4m3(v[b, 16 q + c(L), h, d] * (1 / v_scale))
//                                                       for 16 q + c(L) < seq_kv
//   vt[b, h, d, p]        = 0                          for the padding up to Sp
// with c(L) = 8 ((L & 3) >> 1) + 2 (L >> 2) + (L & 1), the key order in which
// the attention kernel's P fragments hold a 16-key group (attention_fp8.cu
// says why), and Sp = seq_kv rounded up to 16.
//
// with the IR's quantize (times the f32 reciprocal of the scale, rounded to
// nearest even, saturating): the one pass over v does the quantization
// that would otherwise be a kernel of its own.
//
// ABI: (const float* v_scale, unsigned char* vt, int seq_kv, int heads,
//       const __nv_bfloat16* v0, int rows0, int row_stride0, int batch_stride0,
//       const __nv_bfloat16* v1, int row_stride1, int batch_stride1)
// v: bf16 [batch, seq_kv, heads, 128], read from two row sources: keys
// below rows0 are rows of v0, the others rows of v1 (key - rows0), each
// row heads * 128 contiguous values, rows and batches apart by the given
// strides in elements. So v may be a slice of a wider tensor (the value
// columns of a fused q/k/v projection's output) or the concatenation of
// two (the text and image streams' values) without a copy; a contiguous
// v is v0 = v1 = v, rows0 = seq_kv, row_stride = heads * 128, batch_stride
// = seq_kv * heads * 128. Pointers 16-byte aligned, strides multiples of 8.
// v_scale: f32 [1]; vt: e4m3 [batch, heads, 128, Sp].
// grid = (ceil(Sp / 128), heads, batch), block = 256 threads, no dynamic
// shared memory. Every byte of vt is written, the padding included.
//
// Each CTA moves 128 keys x 128 dims of one head: coalesced 16-byte loads
// of the bf16 key rows, quantized and stored as e4m3 into shared memory
// (rows padded to 132 bytes), then each lane takes 4 consecutive output
// positions (keys) of 16 dims: per 4 dims it reads the 4 permuted keys'
// 4-dim words (one 32-bit shared load each), transposes them 4 x 4 bytes with
// byte permutes, and stores 4 bytes to each of the 4 dims' rows, so that a
// warp writes whole 128-byte lines. (Storing 16 keys of one dim per thread
// as 16-byte vectors left every 32-byte sector to two warps: 18.9 against
// 10.7 us at [1, 4608, 24, 128] on the H200. Gathering single bytes took 64
// shared loads per 16 output bytes.)

// Bytes j of a, b, c, d, as one word (a in the lowest byte), for j = 0..3:
// the 4 x 4 byte transpose of (a, b, c, d).
static __device__ __forceinline__ void transpose4x4(unsigned int a, unsigned int b, unsigned int c,
                                                    unsigned int d, unsigned int* out) {
    const unsigned int ab_lo = __byte_perm(a, b, 0x5140);  // a0 b0 a1 b1
    const unsigned int ab_hi = __byte_perm(a, b, 0x7362);  // a2 b2 a3 b3
    const unsigned int cd_lo = __byte_perm(c, d, 0x5140);
    const unsigned int cd_hi = __byte_perm(c, d, 0x7362);
    out[0] = __byte_perm(ab_lo, cd_lo, 0x5410);  // a0 b0 c0 d0
    out[1] = __byte_perm(ab_lo, cd_lo, 0x7632);  // a1 b1 c1 d1
    out[2] = __byte_perm(ab_hi, cd_hi, 0x5410);
    out[3] = __byte_perm(ab_hi, cd_hi, 0x7632);
}

#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256)
{{NAME}}(const float* __restrict__ v_scale, unsigned char* __restrict__ vt, int seq_kv, int heads,
         const __nv_bfloat16* __restrict__ v0, int rows0, int row_stride0, int batch_stride0,
         const __nv_bfloat16* __restrict__ v1, int row_stride1, int batch_stride1) {
    constexpr int D = 128;
    constexpr int KEYS = 128;
    constexpr int STRIDE = D + 4;
    __shared__ __align__(16) unsigned char tile[KEYS * STRIDE];
    const int sp = (max(seq_kv, 1) + 15) / 16 * 16;  // as padded_keys
    const int key0 = blockIdx.x * KEYS;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int tid = threadIdx.x;

    const float inv = __frcp_rn(v_scale[0]);
    // 128 rows x 16 chunks of 8 bf16 (16 bytes): eight per thread, each
    // quantized to 8 e4m3 bytes.
#pragma unroll
    for (int i = 0; i < KEYS * (D / 8) / 256; ++i) {
        const int c = i * 256 + tid;
        const int r = c >> 4;
        const int j = c & 15;
        const int key = key0 + r;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);  // bf16 zeros quantize to zeros
        if (key < seq_kv) {
            const __nv_bfloat16* row =
                key < rows0 ? v0 + (long long)b * batch_stride0 + (long long)key * row_stride0
                            : v1 + (long long)b * batch_stride1 + (long long)(key - rows0) * row_stride1;
            x = *reinterpret_cast<const uint4*>(row + h * D + j * 8);
        }
        const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&x);
        unsigned int packed[2];
#pragma unroll
        for (int w = 0; w < 2; ++w) {
            const float2 lo = __bfloat1622float2(pairs[2 * w]);
            const float2 hi = __bfloat1622float2(pairs[2 * w + 1]);
            unsigned short lo8, hi8;
            asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;\n"
                : "=h"(lo8)
                : "f"(__fmul_rn(lo.x, inv)), "f"(__fmul_rn(lo.y, inv)));
            asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;\n"
                : "=h"(hi8)
                : "f"(__fmul_rn(hi.x, inv)), "f"(__fmul_rn(hi.y, inv)));
            packed[w] = (unsigned int)lo8 | ((unsigned int)hi8 << 16);
        }
        unsigned int* dst = reinterpret_cast<unsigned int*>(tile + r * STRIDE + j * 8);
        dst[0] = packed[0];
        dst[1] = packed[1];
    }
    __syncthreads();

    // Each warp takes 16 dims, each lane 4 consecutive key positions of the
    // tile (4 lanes per 16-key group). Per 4 dims a lane reads its 4
    // permuted keys' 4-dim words, transposes them and stores 4 bytes to
    // each dim's row: a warp writes 128 contiguous bytes of every row.
    const int lane = tid & 31;
    const int pos0 = 4 * lane;
    if (key0 + pos0 >= sp) return;  // sp is a multiple of 16: all 4 or none
    int src[4];  // the tile rows (keys) at positions pos0..pos0+3
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int l = (pos0 & 15) + i;
        src[i] = (pos0 & ~15) + 8 * ((l & 3) >> 1) + 2 * (l >> 2) + (l & 1);
    }
    unsigned char* out = vt + ((long long)b * heads + h) * D * sp + key0 + pos0;
#pragma unroll
    for (int dd = 0; dd < 16; dd += 4) {
        const int d0 = (tid >> 5) * 16 + dd;
        unsigned int words[4], t[4];  // words[i]: dims d0..d0+3 of key src[i]
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            words[i] = *reinterpret_cast<const unsigned int*>(tile + src[i] * STRIDE + d0);
        }
        transpose4x4(words[0], words[1], words[2], words[3], t);  // t[j]: dim d0 + j
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            *reinterpret_cast<unsigned int*>(out + (long long)(d0 + j) * sp) = t[j];
        }
    }
}
