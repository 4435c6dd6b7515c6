// fluxc flash-attention forward kernel template, fp8 version: Q, K and V in
// e4m3 with per-tensor scales, Q.K^T accumulated in f16, P converted to e4m3
// for the P.V product, f32 accumulation of O, bf16 output. Hopper (sm_90a)
// only; the structure is the bf16 kernel's (attention.cu: a TMA producer
// warp, mbarrier rings, two consumer warpgroups on wgmma in ping-pong), with
// k32 fp8 wgmmas.
//
// Rendered by codegen/src/attention_fp8.rs, which replaces these placeholders
// (each written in the source as its name in double curly braces):
//   NAME         kernel symbol, e.g. attention_fp8_d128
//   COMMON       the helpers shared with the bf16 kernel (attention_common.cuh)
//   STAGES       K and V buffers each (2 or 3)
//   BLOCK_N      keys per tile (128 or 256)
//   SHARED_BYTES dynamic shared memory the runtime passes at launch
//
// out[b, s, h, :] = softmax(q[b, s, h, :] . k[b, :, h, :]^T * scale) . v[b, :, h, :]
// with q = q8 * q_scale[0], k = k8 * k_scale[0], v = v8 * v_scale[0];
// non-causal, no mask; D = 128. Every dot product q8 . k8 must stay within
// f16's range (|.| <= 65504): fluxc quantizes q and k into +-16, and
// 16 * 16 * 128 = 32768.
//
// ABI:
//   (const __grid_constant__ FaTensorMap tq, tk, tvt, __nv_bfloat16* o,
//    const float* q_scale, const float* k_scale, const float* v_scale,
//    int seq_q, int seq_kv, int heads, float scale)
// tq / tk: q8 and k8, contiguous e4m3 [batch, seq, heads, 128], as 4-D u8
// tensor maps with dims innermost first [128, heads, seq, batch], byte
// strides [128, 128 heads, 128 seq heads], boxes [128, 1, 128, 1] (q) and
// [128, 1, BLOCK_N, 1] (k), 128-byte swizzle, out-of-bounds elements zero.
// tvt: V transposed by attention_fp8_v.cu, e4m3 [batch, heads, 128, Sp] with
// Sp = seq_kv rounded up to 16 and the keys of every 16-key group stored in
// the order the P fragments hold them (below); dims [Sp, 128, heads, batch],
// byte strides [Sp, 128 Sp, 128 Sp heads], box [128, 128, 1, 1] (a key tile
// is BLOCK_N / 128 boxes: the 128-byte swizzle allows no wider one), 128-byte
// swizzle, out-of-bounds zero. o: contiguous bf16 [batch, seq_q, heads, 128].
// grid = (ceil(seq_q / 128), heads, batch), block = 384 threads, dynamic
// shared memory = SHARED_BYTES (> 48 KiB: raise the attribute).
// NAME_part and NAME_merge run chosen query tiles split over their keys
// (the runtime's attention_split, for the last wave of tiles), as the bf16
// kernel's do; the body is one device function, NAME_cta<PART>.
//
// Why V is transposed: wgmma takes 8-bit operands from shared memory only
// K-major, and for P.V the reduction runs over keys, so V must be stored
// keys-innermost.
//
// Why the keys are permuted: the k32 A fragment of an 8-bit wgmma gives
// thread t of a quad the bytes k = 4t..4t+3 (and 16+4t..16+4t+3) of its rows,
// while the S accumulator gives it the columns 2t, 2t+1, 8+2t, 9+2t (and
// +16). Packing a thread's own four S values into one A register therefore
// puts S column c at A position L with
//   c = 8 ((L & 3) >> 1) + 2 (L >> 2) + (L & 1)      (within each 16 keys)
// and P.V is right when V's key rows are stored in the same order: position
// L of every 16-key group holds key c(L). No shuffles in the kernel.
//
// Why S is f16: the softmax, not the tensor cores, bounds an fp8 attention
// at D = 128 (per score one exponential and half an e4m3 conversion on the
// SM's quarter-rate unit, as many cycles as the tile's fp8 wgmmas). With an
// f16 accumulator every softmax instruction (max, FMA, ex2, conversion to
// e4m3) works on a pair of scores, and S takes half the registers, which
// leaves room for 256-key tiles (half the per-tile row maxima, shuffles and
// O rescales). f16 keeps 11 significant bits: the scores move by 2^-11 of
// their size, far less than e4m3's rounding of q, k and P.
//
// Softmax: the scores get one f16x2 FMA per pair, with the scale, log2(e) and
// q_scale * k_scale folded into one f16 factor, and the running max folded
// into the addend: P = exp2(S' - max + 8), i.e. 256 times the probability, so
// that it uses e4m3's range (at most 256 of 448) instead of underflowing
// below 2^-9. The addend 8 - max is rounded down to an f16 (so no P passes
// 256) and kept exact in f32, so the rescale factors of O and l use the very
// value the exponentials did. The exponential unit is still the bound, so a
// share of the pairs (EXP2_POLY_PAIRS of every EXP2_POLY_GROUP) is
// exponentiated on the FMA pipe instead, by a polynomial with the exponent
// added as an integer (h2_exp2_fma_poly; half of them: 1000 -> 1040 TFLOP/s
// at FLUX's shape). The row sums l come from the tensor cores: with the same
// P registers, m64n8k32 wgmmas against a tile of e4m3 ones (8 rows of 128
// keys) sum each row of P as rounded to e4m3, like the numerator. Their
// accumulator starts fresh on every key tile: summed across tiles in the
// wgmma accumulator (fp8 wgmmas keep fewer bits when they add to it) a sum of
// that many positive terms drifted low, 7.5e-2 error at 4592 keys. Each
// tile's sum is added in f32, rescaled with O; the factor 256 cancels in O /
// l, and v_scale is applied once in the epilogue.
//
// Shared memory (from a 1024-byte aligned base; 1024 bytes of slack): sQ
// 128 x 128 bytes; sK[STAGES] BLOCK_N keys x 128 bytes; sVt[STAGES]
// BLOCK_N / 128 boxes of 128 rows of D x 128 keys; sO 128 x 256 bytes (the
// bf16 output tile, two 64-column blocks); sOnes 8 x 128 bytes of e4m3 ones;
// the mbarriers. Every tile is rows of 128 bytes with the 128-byte swizzle
// (chunk j of row r at j ^ (r & 7)), 8-row groups 1024 bytes apart: K-major
// for all three wgmma operands read from shared memory.

#include <cuda_bf16.h>

{{COMMON}}

#ifndef FLUXC_FA_FP8_HELPERS
#define FLUXC_FA_FP8_HELPERS

// d[0..32) (= or +=, scale_d) A(64x32, smem desc) * B(32x128, smem desc),
// both K-major, f16 accumulators: register i holds the f32 layout's
// elements 2i (low half) and 2i + 1 (high half).
static __device__ __forceinline__ void fp8_wgmma_ss_n128_f16(unsigned int* d,
                                                             unsigned long long desc_a,
                                                             unsigned long long desc_b,
                                                             int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f16.e4m3.e4m3 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
          "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
          "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
          "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// Packed f16 pairs (low half first) in 32-bit registers.
static __device__ __forceinline__ unsigned int h2_max(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("max.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
static __device__ __forceinline__ unsigned int h2_min(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("min.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
// exp2(a * b + c) on both halves: one f16x2 FMA and one f16x2 exponential.
static __device__ __forceinline__ unsigned int h2_exp2_fma(unsigned int a, unsigned int b,
                                                           unsigned int c) {
    unsigned int r;
    asm("{\n.reg .b32 x;\n"
        "fma.rn.f16x2 x, %1, %2, %3;\n"
        "ex2.approx.f16x2 %0, x;\n}\n"
        : "=r"(r)
        : "r"(a), "r"(b), "r"(c));
    return r;
}
// exp2(a * b + c) on both halves without the exponential unit, for a share
// of the pairs (the quarter-rate ex2 bounds the kernel): x = a * b + c,
// clamped to >= -11 (2^-11 is 0 in e4m3 anyway), split as x = r + f with
// r = round(x) and |f| <= 1/2; 2^f * 2^-11 by a degree-2 polynomial whose
// coefficients carry the 2^-11 (relative error 3.4e-3 in f16, far below
// e4m3's 2^-4 rounding), then r + 11 added to its exponent as an integer.
// The magic 1035 = 1024 + 11 leaves r + 11 (0..20) in the low mantissa bits
// of t = x + 1035; masked to 6 bits per half and times 1024, that is the
// exponent increment, and with r + 11 >= 0 no half carries into the other,
// so one integer multiply-add applies it. Valid for x <= 9 (P <= 2^8.75).
// codegen/tests/exp2_poly.rs emulates it exactly on every f16 input.
static __device__ __forceinline__ unsigned int h2_exp2_fma_poly(unsigned int a, unsigned int b,
                                                                unsigned int c) {
    unsigned int r;
    asm("{\n.reg .b32 x, t, n, f, p, e, lo, magic, c2, c1, c0;\n"
        "mov.b32 lo, 0xC980C980;\n"     // -11
        "mov.b32 magic, 0x640B640B;\n"  // 1035
        "mov.b32 c2, 0x07980798;\n"     // 0.2373 * 2^-11
        "mov.b32 c1, 0x0D9C0D9C;\n"     // 0.7012 * 2^-11
        "mov.b32 c0, 0x10001000;\n"     // 2^-11
        "fma.rn.f16x2 x, %1, %2, %3;\n"
        "max.f16x2 x, x, lo;\n"
        "add.rn.f16x2 t, x, magic;\n"   // r + 11 in the mantissa's low bits
        "sub.rn.f16x2 n, t, magic;\n"   // r
        "sub.rn.f16x2 f, x, n;\n"       // f in [-1/2, 1/2]
        "fma.rn.f16x2 p, f, c2, c1;\n"
        "fma.rn.f16x2 p, p, f, c0;\n"   // 2^f * 2^-11
        "and.b32 e, t, 0x003F003F;\n"   // r + 11 in each half
        "mad.lo.u32 %0, e, 1024, p;\n}\n"
        : "=r"(r)
        : "r"(a), "r"(b), "r"(c));
    return r;
}
// The larger (or smaller) half of a pair, as f32.
static __device__ __forceinline__ float h2_reduce_f32(unsigned int a, bool larger) {
    float lo, hi;
    asm("{\n.reg .b16 l, h;\n"
        "mov.b32 {l, h}, %2;\n"
        "cvt.f32.f16 %0, l;\n"
        "cvt.f32.f16 %1, h;\n}\n"
        : "=f"(lo), "=f"(hi)
        : "r"(a));
    return larger ? fmaxf(lo, hi) : fminf(lo, hi);
}
// x rounded to f16 (toward -inf when down, else to nearest), as the f16
// and as its f32 value.
static __device__ __forceinline__ unsigned short f16_of(float x, bool down, float* exact) {
    unsigned short h;
    if (down) {
        asm("cvt.rm.f16.f32 %0, %1;\n" : "=h"(h) : "f"(x));
    } else {
        asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(h) : "f"(x));
    }
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(*exact) : "h"(h));
    return h;
}
// Two f16 pairs to four e4m3 bytes (a's low half in the lowest byte),
// saturating.
static __device__ __forceinline__ unsigned int fp8_pack_h2(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("{\n.reg .b16 lo, hi;\n"
        "cvt.rn.satfinite.e4m3x2.f16x2 lo, %1;\n"
        "cvt.rn.satfinite.e4m3x2.f16x2 hi, %2;\n"
        "mov.b32 %0, {lo, hi};\n}\n"
        : "=r"(r)
        : "r"(a), "r"(b));
    return r;
}

// d[0..64) += A(64x32, registers a0..a3) * B(32x128, smem desc), B K-major.
static __device__ __forceinline__ void fp8_wgmma_rs_n128(float* d, unsigned int a0,
                                                         unsigned int a1, unsigned int a2,
                                                         unsigned int a3,
                                                         unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "r"(1));
}

// d[0..4) (= or +=, scale_d) A(64x32, registers a0..a3) * B(32x8, smem
// desc), B K-major: with B all ones, each row's sum of A.
static __device__ __forceinline__ void fp8_wgmma_rs_n8(float* d, unsigned int a0, unsigned int a1,
                                                       unsigned int a2, unsigned int a3,
                                                       unsigned long long desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %9, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "r"(scale_d));
}

#endif  // FLUXC_FA_FP8_HELPERS


// One CTA's work: query rows [m0, m0 + 128) of head h of batch b against
// key tiles [j0, j0 + n_tiles). Without PART it writes O * v_scale / l to o
// in bf16; with PART it writes O * v_scale, the row maxima (in the log2
// units of the exponentials: 8 - neg_max) and the row sums to part, as
// ws_split_store lays them out, for {{NAME}}_merge (the factor 2^8 of P
// cancels there as it does in O / l).
template <bool PART>
static __device__ __forceinline__ void {{NAME}}_cta(
    const FaTensorMap& tq, const FaTensorMap& tk, const FaTensorMap& tvt,
    __nv_bfloat16* __restrict__ o, float* __restrict__ part, const float* __restrict__ q_scale,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale, int seq_q, int seq_kv,
    int heads, float scale, int m0, int h, int b, int j0, int n_tiles) {
    constexpr int D = 128;
    constexpr int STAGES = {{STAGES}};
    constexpr int BLOCK_M = 128;          // two consumer warpgroups x 64 rows
    constexpr int BLOCK_N = {{BLOCK_N}};  // keys per tile
    constexpr int VT_BOX = 128;           // keys per Vt box (one 128-byte swizzle row)
    constexpr int QB = BLOCK_M * D;       // bytes of the Q tile
    constexpr int KVB = BLOCK_N * D;      // bytes of one K or Vt tile
    constexpr int VT_HALF = VT_BOX * D;   // bytes of one Vt box
    constexpr int OB = BLOCK_M * D * 2;   // bytes of the bf16 output tile
    constexpr int ONESB = 8 * 128;        // bytes of the ones tile
    constexpr int NS = BLOCK_N / 4;       // S registers per thread (f16 pairs)
    constexpr int EXP2_POLY_PAIRS = {{EXP2_POLY_PAIRS}};  // of every
    constexpr int EXP2_POLY_GROUP = {{EXP2_POLY_GROUP}};  // pairs of P
    constexpr int NO = D / 2;             // O accumulator floats per thread
    constexpr int KSTEPS_QK = D / 32;
    constexpr int KSTEPS_PV = BLOCK_N / 32;
    constexpr int NP = KSTEPS_PV * 4;     // packed e4m3x4 registers of P
    static_assert(STAGES == 2 || STAGES == 3, "2 or 3 K/V buffers");
    static_assert(BLOCK_N == 128 || BLOCK_N == 256, "128 or 256 keys per tile");
    // Barriers: q_full, k_full[S], v_full[S], k_empty[S], v_empty[S].
    constexpr int BAR_BYTES = 8 * (1 + 4 * STAGES);
    static_assert(QB + 2 * STAGES * KVB + OB + ONESB + BAR_BYTES + 1024 <= {{SHARED_BYTES}},
                  "shared layout larger than the launch size computed by codegen");

    extern __shared__ unsigned char {{NAME}}_smem[];
    const unsigned int smem_raw = ws_smem_addr({{NAME}}_smem);
    const unsigned int sQ = (smem_raw + 1023u) & ~1023u;
    const unsigned int sK = sQ + QB;
    const unsigned int sV = sK + STAGES * KVB;
    const unsigned int sO = sV + STAGES * KVB;
    const unsigned int sOnes = sO + OB;  // 1024-aligned: every size above is
    const unsigned int bars = sOnes + ONESB;
    const unsigned int q_full = bars;
    auto k_full = [&](int s) { return bars + 8u * (1 + s); };
    auto v_full = [&](int s) { return bars + 8u * (1 + STAGES + s); };
    auto k_empty = [&](int s) { return bars + 8u * (1 + 2 * STAGES + s); };
    auto v_empty = [&](int s) { return bars + 8u * (1 + 3 * STAGES + s); };

    const int tid = threadIdx.x;
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);  // warp-uniform

    if (tid == 0) {
        ws_mbar_init(q_full, 1);
        for (int s = 0; s < STAGES; ++s) {
            ws_mbar_init(k_full(s), 1);
            ws_mbar_init(v_full(s), 1);
            ws_mbar_init(k_empty(s), 256);
            ws_mbar_init(v_empty(s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    // The ones tile (e4m3 1.0 = 0x38), made visible to the tensor cores'
    // async proxy by the threads that wrote it.
    for (int i = tid; i < ONESB / 4; i += blockDim.x) {
        reinterpret_cast<unsigned int*>({{NAME}}_smem + (sOnes - smem_raw))[i] = 0x38383838u;
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    if (wg == 0) {
        // ---- Producer: the Q tile once, then K_j and Vt_j into the rings. ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (tid == 0) {
            ws_prefetch_map(&tq);
            ws_prefetch_map(&tk);
            ws_prefetch_map(&tvt);
            ws_mbar_expect_tx(q_full, QB);
            ws_tma_load_4d(sQ, &tq, q_full, 0, h, m0, b);
            for (int j = 0; j < n_tiles; ++j) {
                const int st = j % STAGES;
                // Phase parity of the buffer's j / STAGES-th reuse; a fresh
                // barrier counts its "previous" phase (parity 1) as complete.
                const unsigned int free_parity = ((j / STAGES) & 1) ^ 1;
                ws_mbar_wait(k_empty(st), free_parity);
                ws_mbar_expect_tx(k_full(st), KVB);
                ws_tma_load_4d(sK + st * KVB, &tk, k_full(st), 0, h, (j0 + j) * BLOCK_N, b);
                ws_mbar_wait(v_empty(st), free_parity);
                ws_mbar_expect_tx(v_full(st), KVB);
#pragma unroll
                for (int half = 0; half < BLOCK_N / VT_BOX; ++half) {
                    ws_tma_load_4d(sV + st * KVB + half * VT_HALF, &tvt, v_full(st),
                                   (j0 + j) * BLOCK_N + half * VT_BOX, 0, h, b);
                }
            }
        }
        return;
    }

    // ---- Consumers: warpgroup cw = wg - 1 owns query rows [64 cw, +64). ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
    const int cw = wg - 1;
    const int ctid = tid - 128 * wg;  // thread index inside the warpgroup
    const int wrow = (ctid >> 5) * 16;
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    // Ping-pong, as in the bf16 kernel: named barrier 1 + cw is "warpgroup
    // cw may issue"; each syncs on its own and arrives on the other's.
    auto turn_wait = [&]() { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + cw) : "memory"); };
    auto turn_pass = [&]() { asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - cw) : "memory"); };
    if (cw == 1) turn_pass();  // warpgroup 0 goes first

    const unsigned long long desc_q = ws_desc_sw128(sQ + cw * 64 * 128, 16, 1024);
    const unsigned long long desc_k0 = ws_desc_sw128(sK, 16, 1024);
    const unsigned long long desc_v0 = ws_desc_sw128(sV, 16, 1024);
    const unsigned long long desc_ones = ws_desc_sw128(sOnes, 16, 1024);
    constexpr unsigned long long KV_STEP = KVB >> 4;

    float acc_o[NO];
#pragma unroll
    for (int i = 0; i < NO; ++i) acc_o[i] = 0.0f;
    float acc_l[4];  // this tile's row sums of P: rows g (0, 1) and g + 8 (2, 3)
    // S (then P) as f16 pairs: s[2 n + r] holds row g + 8 r, keys
    // 8 n + 2 t (low half) and 8 n + 2 t + 1 (high half).
    unsigned int s[NS];
    unsigned int pa[NP];
    const float NEG_INF = __int_as_float(0xff800000);
    const float POS_INF = __int_as_float(0x7f800000);
    // -(running max) + 8 per row, an exact f16 value (+inf before tile 0).
    float neg_max[2] = {POS_INF, POS_INF};
    float row_sum[2] = {0.0f, 0.0f};
    // The score factor in f16 (clamped to its range), and its exact value.
    float score_factor;
    const unsigned short factor_h = f16_of(
        fminf(fmaxf(scale * 1.4426950408889634f * q_scale[0] * k_scale[0], -65504.0f), 65504.0f),
        false, &score_factor);
    const unsigned int factor2 = (unsigned int)factor_h * 0x10001u;
    const float out_scale = v_scale[0];

    // Descriptors computed (and pinned in registers) before a group's first
    // wgmma is issued: ptxas serializes wgmmas whose inputs are defined by
    // other instructions between them. One k32 step is 32 bytes of a row.
    struct QkDescs {
        unsigned long long q[KSTEPS_QK], k[KSTEPS_QK];
    };
    struct PvDescs {
        unsigned long long v[KSTEPS_PV], ones[4];
    };
    auto qk_descs = [&](int buf) {
        QkDescs d;
        const unsigned long long dk = desc_k0 + (unsigned long long)buf * KV_STEP;
#pragma unroll
        for (int kk = 0; kk < KSTEPS_QK; ++kk) {
            d.q[kk] = desc_q + ((kk * 32) >> 4);
            d.k[kk] = dk + ((kk * 32) >> 4);
            ws_reg_fence(d.q[kk]);
            ws_reg_fence(d.k[kk]);
        }
        return d;
    };
    auto pv_descs = [&](int buf) {
        PvDescs d;
        const unsigned long long dv = desc_v0 + (unsigned long long)buf * KV_STEP;
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            d.v[kk] = dv + (((kk / 4) * VT_HALF + (kk % 4) * 32) >> 4);
            ws_reg_fence(d.v[kk]);
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            d.ones[kk] = desc_ones + ((kk * 32) >> 4);
            ws_reg_fence(d.ones[kk]);
        }
        return d;
    };
    // S = Q K^T: per k32 step one m64n128 wgmma per 128 keys (rows 128..255
    // of the K tile are 16 KiB further).
    auto issue_qk = [&](const QkDescs& d) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_QK; ++kk) {
#pragma unroll
            for (int part = 0; part < BLOCK_N / 128; ++part) {
                fp8_wgmma_ss_n128_f16(s + 32 * part, d.q[kk], d.k[kk] + ((part * 128 * 128) >> 4),
                                      kk > 0 ? 1 : 0);
            }
        }
    };
    auto issue_pv = [&](const PvDescs& d, const unsigned int* p) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            fp8_wgmma_rs_n128(acc_o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                              d.v[kk]);
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            fp8_wgmma_rs_n8(acc_l, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                            d.ones[kk % 4], kk > 0 ? 1 : 0);
        }
    };
    // Masks the keys of tile j past seq_kv (both halves of a pair, or the
    // high one) with `fill` (an f16 pair pattern).
    auto mask_tail = [&](int kv0, unsigned int fill) {
#pragma unroll
        for (int n = 0; n < NS / 2; ++n) {
            const int key = kv0 + n * 8 + 2 * t;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                unsigned int& x = s[2 * n + r];
                if (key >= seq_kv) {
                    x = fill;
                } else if (key + 1 >= seq_kv) {
                    x = (x & 0xffffu) | (fill & 0xffff0000u);
                }
            }
        }
    };
    // Online softmax of tile j in s, in f16 pairs: P = exp2(S * factor +
    // neg_max), i.e. 2^8 times the probability relative to the running max.
    auto softmax = [&](int j, float* alpha) {
        const int kv0 = j * BLOCK_N;
        const bool tail = kv0 + BLOCK_N > seq_kv;
        const bool pos = score_factor >= 0.0f;
        if (tail) mask_tail(kv0, pos ? 0xfc00fc00u : 0x7c007c00u);
        // Both rows at once, with four partial maxima per row: short
        // dependency chains for a warp that has few others to hide latency
        // behind.
        float mx[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            unsigned int part[4] = {s[r], s[r], s[r], s[r]};
#pragma unroll
            for (int n = 0; n < NS / 2; ++n) {
                part[n & 3] = pos ? h2_max(part[n & 3], s[2 * n + r]) : h2_min(part[n & 3], s[2 * n + r]);
            }
            const unsigned int m2 = pos ? h2_max(h2_max(part[0], part[1]), h2_max(part[2], part[3]))
                                        : h2_min(h2_min(part[0], part[1]), h2_min(part[2], part[3]));
            mx[r] = h2_reduce_f32(m2, pos);
        }
        unsigned int neg2[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            // The new running max, then -max + 8 rounded down to an f16
            // (so no P exceeds 2^8), kept exact for alpha.
            const float m = fmaxf(8.0f - neg_max[r], ws_quad_max(mx[r] * score_factor));
            float neg;
            const unsigned short nh = f16_of(fminf(fmaxf(8.0f - m, -65504.0f), 65504.0f), true, &neg);
            alpha[r] = ws_ex2(neg - neg_max[r]);
            neg_max[r] = neg;
            neg2[r] = (unsigned int)nh * 0x10001u;
        }
#pragma unroll
        for (int i = 0; i < NS; ++i) {
            // The last EXP2_POLY_PAIRS of every EXP2_POLY_GROUP pairs on the
            // FMA pipe (which ones matters: with 1 of 2, the odd pairs, all of
            // one row, ran 3% faster than the even ones).
            s[i] = (i % EXP2_POLY_GROUP >= EXP2_POLY_GROUP - EXP2_POLY_PAIRS)
                       ? h2_exp2_fma_poly(s[i], factor2, neg2[i & 1])
                       : h2_exp2_fma(s[i], factor2, neg2[i & 1]);
        }
        if (tail) mask_tail(kv0, 0u);  // a zero factor turns masked keys into NaN
    };
    // P packed to e4m3: the A fragments of P.V, each thread's own values in
    // the key order the permuted Vt expects (see the header). For keys
    // [32 kk, 32 kk + 32): a0 = row g, S columns 0,1,8,9 (+2t); a1 = row
    // g+8, the same; a2, a3 = the same 16 keys further.
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            const unsigned int* c = s + 8 * kk;
            pa[4 * kk + 0] = fp8_pack_h2(c[0], c[2]);
            pa[4 * kk + 1] = fp8_pack_h2(c[1], c[3]);
            pa[4 * kk + 2] = fp8_pack_h2(c[4], c[6]);
            pa[4 * kk + 3] = fp8_pack_h2(c[5], c[7]);
        }
    };
    auto fence_acc_p = [&](unsigned int* p) {
#pragma unroll
        for (int i = 0; i < NO; ++i) ws_reg_fence(acc_o[i]);
#pragma unroll
        for (int i = 0; i < 4; ++i) ws_reg_fence(acc_l[i]);
#pragma unroll
        for (int i = 0; i < NP; ++i) ws_reg_fence(p[i]);
    };

    ws_mbar_wait(q_full, 0);
    if (n_tiles > 0) {
        // Tile 0: S_0 only (no P.V yet).
        ws_mbar_wait(k_full(0), 0);
        const QkDescs d0 = qk_descs(0);
        turn_wait();
        ws_wgmma_fence();
        issue_qk(d0);
        ws_wgmma_commit();
        turn_pass();
        ws_wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NS; ++i) ws_reg_fence(s[i]);
        ws_mbar_arrive(k_empty(0));
        {
            float alpha[2];
            softmax(j0, alpha);  // O is still zero: no rescale
            pack_p();
        }
        for (int j = 1; j < n_tiles; ++j) {
            const int st = j % STAGES;
            const int sp = (j - 1) % STAGES;
            ws_mbar_wait(k_full(st), (j / STAGES) & 1);
            ws_mbar_wait(v_full(sp), ((j - 1) / STAGES) & 1);
            const QkDescs dqk = qk_descs(st);
            const PvDescs dpv = pv_descs(sp);
            turn_wait();
            fence_acc_p(pa);
            ws_wgmma_fence();
            issue_qk(dqk);
            ws_wgmma_commit();
            issue_pv(dpv, pa);
            ws_wgmma_commit();
            turn_pass();
            ws_wgmma_wait<1>();
#pragma unroll
            for (int i = 0; i < NS; ++i) ws_reg_fence(s[i]);
            ws_mbar_arrive(k_empty(st));
            float alpha[2];
            softmax(j0 + j, alpha);
            ws_wgmma_wait<0>();
            fence_acc_p(pa);
#pragma unroll
            for (int i = 0; i < NS; ++i) ws_reg_fence(s[i]);
            ws_mbar_arrive(v_empty(sp));
            // l and O: (l + this P's sums) and O, both rescaled to tile j's max.
            row_sum[0] = (row_sum[0] + acc_l[0]) * alpha[0];
            row_sum[1] = (row_sum[1] + acc_l[2]) * alpha[1];
#pragma unroll
            for (int n = 0; n < NO / 4; ++n) {
                acc_o[4 * n + 0] *= alpha[0];
                acc_o[4 * n + 1] *= alpha[0];
                acc_o[4 * n + 2] *= alpha[1];
                acc_o[4 * n + 3] *= alpha[1];
            }
            pack_p();
        }
        // Last P.V.
        const int sl = (n_tiles - 1) % STAGES;
        ws_mbar_wait(v_full(sl), ((n_tiles - 1) / STAGES) & 1);
        const PvDescs dl = pv_descs(sl);
        fence_acc_p(pa);
        ws_wgmma_fence();
        issue_pv(dl, pa);
        ws_wgmma_commit();
        ws_wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NO; ++i) ws_reg_fence(acc_o[i]);
#pragma unroll
        for (int i = 0; i < 4; ++i) ws_reg_fence(acc_l[i]);
        row_sum[0] += acc_l[0];
        row_sum[1] += acc_l[2];
    } else {
        turn_wait();
        turn_pass();
    }
    // Consume the last pass of warpgroup 1 so no named barrier is left half
    // arrived.
    if (cw == 0) turn_wait();

    if constexpr (PART) {
        const float m[2] = {8.0f - neg_max[0], 8.0f - neg_max[1]};
        ws_split_store<D>(part, acc_o, out_scale, cw * 64 + wrow + g, t, m, row_sum);
    } else {
        // ---- Epilogue: O * v_scale / l -> bf16, staged in this warpgroup's
        // rows of the output tile. ----
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float l = row_sum[r];  // whole rows: every thread of the quad has it
            inv[r] = (l > 0.0f) ? out_scale / l : 0.0f;  // seq_kv == 0 -> zeros
        }
        ws_store_output<D>({{NAME}}_smem + (sO - smem_raw), acc_o, inv, o, seq_q, heads, m0, h, b,
                           cw, wrow, g, t, ctid);
    }
}

extern "C" __global__ void __launch_bounds__(384, 1)
{{NAME}}(const __grid_constant__ FaTensorMap tq, const __grid_constant__ FaTensorMap tk,
         const __grid_constant__ FaTensorMap tvt, __nv_bfloat16* __restrict__ o,
         const float* __restrict__ q_scale, const float* __restrict__ k_scale,
         const float* __restrict__ v_scale, int seq_q, int seq_kv, int heads, float scale) {
    {{NAME}}_cta<false>(tq, tk, tvt, o, nullptr, q_scale, k_scale, v_scale, seq_q, seq_kv, heads,
                        scale, blockIdx.x * 128, blockIdx.y, blockIdx.z, 0,
                        (seq_kv + {{BLOCK_N}} - 1) / {{BLOCK_N}});
}

// The query tiles of the last wave split over their keys, as the bf16
// kernel's _part (ws_split_segment, ws_split_slot); same ABI as the
// whole-tile kernel with part in place of o and q_tile_base, kv_splits last.
extern "C" __global__ void __launch_bounds__(384, 1)
{{NAME}}_part(const __grid_constant__ FaTensorMap tq, const __grid_constant__ FaTensorMap tk,
              const __grid_constant__ FaTensorMap tvt, float* __restrict__ part,
              const float* __restrict__ q_scale, const float* __restrict__ k_scale,
              const float* __restrict__ v_scale, int seq_q, int seq_kv, int heads, float scale,
              int q_tile_base, int kv_splits) {
    int j0, n;
    ws_split_segment((seq_kv + {{BLOCK_N}} - 1) / {{BLOCK_N}}, kv_splits, &j0, &n);
    {{NAME}}_cta<true>(tq, tk, tvt, nullptr, ws_split_slot<128>(part), q_scale, k_scale, v_scale,
                       seq_q, seq_kv, heads, scale, (q_tile_base + blockIdx.x / kv_splits) * 128,
                       blockIdx.y, blockIdx.z, j0, n);
}

// Combines {{NAME}}_part's kv_splits results of each query row into o
// (ws_split_merge).
extern "C" __global__ void __launch_bounds__(128)
{{NAME}}_merge(const float* __restrict__ part, __nv_bfloat16* __restrict__ o, int seq_q,
               int heads, int q_tile_base, int kv_splits) {
    ws_split_merge<128>(part, o, seq_q, heads, q_tile_base, kv_splits);
}
