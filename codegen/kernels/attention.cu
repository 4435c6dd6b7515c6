// fluxc flash-attention forward kernel template (bf16 in/out, f32 accumulate),
// Hopper (sm_90a) warp-specialized version: TMA loads by a producer warp,
// mbarrier pipelines, two consumer warpgroups on wgmma in ping-pong.
//
// Rendered by codegen/src/attention.rs, which replaces these placeholders (each
// written in the source as its name in double curly braces):
//   NAME         kernel symbol, e.g. attention_d128_bf16
//   HEAD_DIM     head dimension D (64 or 128)
//   BLOCK_N      keys per tile (128 or 192)
//   STAGES       K and V buffers each (2 or 3)
//   SHARED_BYTES dynamic shared memory the runtime passes at launch
//
// out[b, s, h, :] = softmax(q[b, s, h, :] . k[b, :, h, :]^T * scale) . v[b, :, h, :]
// non-causal, no mask; q/k/v/o are contiguous [batch, seq, heads, D] bf16.
//
// ABI:
//   (const __grid_constant__ FaTensorMap tq, tk, tv, __nv_bfloat16* o,
//    int seq_q, int seq_kv, int heads, float scale)
// tq / tk / tv are CUDA tensor maps (cuTensorMapEncodeTiled) of q, k, v as
// 4-D bf16 tensors, dims innermost first [D, heads, seq, batch], byte
// strides [2D, 2 heads D, 2 seq heads D], box [64, 1, 128, 1] for q and
// [64, 1, BLOCK_N, 1] for k and v, element strides 1, no interleave,
// 128-byte swizzle, out-of-bounds elements zero.
// grid = (ceil(seq_q / 128), heads, batch), block = 384 threads, dynamic
// shared memory = SHARED_BYTES (> 48 KiB: raise the attribute).
//
// Roles (FlashAttention-3's structure):
//   * Warpgroup 0 is the producer: it gives its registers away (setmaxnreg)
//     and one thread issues every TMA copy: the Q tile once, then K_j and
//     V_j for every key tile j into STAGES-deep rings, each buffer guarded by
//     a "full" mbarrier (the copy's transaction bytes) and an "empty" one
//     (the consumers' release).
//   * Warpgroups 1 and 2 are the consumers: each owns 64 query rows of the
//     CTA's 128 and runs its own online softmax. Per key tile j:
//       S_j = Q.K_j^T      wgmma.m64n{BLOCK_N}k16, A and B from shared memory
//       O  += P_{j-1}.V_{j-1}  wgmma.m64n{D}k16, A = P from registers
//     issued back to back; the warpgroup waits for S_j only, releases K_j,
//     runs the softmax of S_j (in place, in f32) while the tensor cores
//     still work on the P.V, then waits for that, releases V_{j-1},
//     rescales O and packs P_j to bf16 (one P buffer: the registers go to
//     the wider S tile).
//   * Ping-pong: a consumer issues its GEMMs only when the other one has
//     issued its own (two named barriers), so the tensor cores alternate
//     between the warpgroups and each softmax overlaps the other's GEMMs.
//   * Softmax in base 2 (ex2.approx) with one FFMA per score; keys >= seq_kv
//     (zero-filled by the TMA) are left out of the max and get P = 0.
//   * Epilogue: O / l rounded to bf16, staged through the consumer's own rows
//     of the Q tile, stored with 16-byte row-predicated writes.
//
// Shared memory (from a 1024-byte aligned base; 1024 bytes of slack):
//   sQ: 128 x D; sK[STAGES], sV[STAGES]: BLOCK_N x D each; then the
//   mbarriers.
// Tiles are D/64 column blocks of R rows x 128 bytes with the 128-byte
// swizzle (chunk j of row r at chunk position j ^ (r & 7)), which is what a
// TMA box of [64, 1, R, 1] with CU_TENSOR_MAP_SWIZZLE_128B writes and what
// the wgmma descriptors read: K-major for Q and K, N-major for V.
// (Q and K: 8-row groups SBO = 1024 bytes apart; V: 8-key groups SBO = 1024
// bytes apart, 64-column blocks LBO = BLOCK_N * 128 bytes apart.)
//
// wgmma register fragments (PTX ISA "Register Fragments", m64nNk16): warp
// i of a warpgroup holds rows 16i..16i+15; with g = lane >> 2, t = lane & 3,
//   accumulator: d[4n + 0], d[4n + 1] = (row g,   cols 8n + 2t, +1)
//                d[4n + 2], d[4n + 3] = (row g+8, cols 8n + 2t, +1)
//   A (bf16, 4 x .b32): a0 = (row g, k 2t..+1), a1 = (row g+8, k 2t..+1),
//                       a2 = (row g, k 2t+8..+9), a3 = (row g+8, k 2t+8..+9)
// so the A fragment of P for keys [16kk, 16kk + 16) is
//   a0 = s[8kk+0..1], a1 = s[8kk+2..3], a2 = s[8kk+4..5], a3 = s[8kk+6..7].
//
// Measured on the H200 (benches/attention, D = 128): with BLOCK_N = 192 and
// 2 stages 626 TFLOP/s at [1, 24, 4608] and 587 at [1, 24, 4352]; 581 / 566
// with BLOCK_N = 128 and 3 stages; 480 / 472 for the previous design (every
// warp copying with cp.async, one CTA barrier per key tile).

#include <cuda_bf16.h>


{{COMMON}}

#ifndef FLUXC_FA_BF16_HELPERS
#define FLUXC_FA_BF16_HELPERS

// d[0..64) (+)= A(64x16, smem desc) * B(16x128, smem desc); K-major A and B.
static __device__ __forceinline__ void ws_wgmma_ss_n128(float* d, unsigned long long desc_a,
                                                        unsigned long long desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[0..96) (+)= A(64x16, smem desc) * B(16x192, smem desc); K-major A and B.
static __device__ __forceinline__ void ws_wgmma_ss_n192(float* d, unsigned long long desc_a,
                                                        unsigned long long desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %98, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
        "}, %96, %97, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[0..64) += A(64x16, registers a0..a3) * B(16x128, smem desc), B N-major.
static __device__ __forceinline__ void ws_wgmma_rs_n128_tb(float* d, unsigned int a0,
                                                           unsigned int a1, unsigned int a2,
                                                           unsigned int a3,
                                                           unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
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

// d[0..32) += A(64x16, registers a0..a3) * B(16x64, smem desc), B N-major.
static __device__ __forceinline__ void ws_wgmma_rs_n64_tb(float* d, unsigned int a0,
                                                          unsigned int a1, unsigned int a2,
                                                          unsigned int a3,
                                                          unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "r"(1));
}

#endif  // FLUXC_FA_BF16_HELPERS


// One CTA's work: query rows [m0, m0 + 128) of head h of batch b against
// key tiles [j0, j0 + n_tiles). Without PART it writes O / l to o in bf16;
// with PART it writes the unnormalized O, the row maxima (in the softmax's
// base-2 units) and the row sums to part, as ws_split_store lays them out,
// for {{NAME}}_merge.
template <bool PART>
static __device__ __forceinline__ void {{NAME}}_cta(const FaTensorMap& tq, const FaTensorMap& tk,
                                                    const FaTensorMap& tv,
                                                    __nv_bfloat16* __restrict__ o,
                                                    float* __restrict__ part, int seq_q,
                                                    int seq_kv, int heads, float scale, int m0,
                                                    int h, int b, int j0, int n_tiles) {
    constexpr int D = {{HEAD_DIM}};
    constexpr int STAGES = {{STAGES}};
    constexpr int BLOCK_M = 128;          // two consumer warpgroups x 64 rows
    constexpr int BLOCK_N = {{BLOCK_N}};  // keys per tile
    constexpr int QB = BLOCK_M * D * 2;   // bytes of the Q tile
    constexpr int KVB = BLOCK_N * D * 2;  // bytes of one K or V tile
    constexpr int NS = BLOCK_N / 2;       // S accumulator floats per thread
    constexpr int NO = D / 2;             // O accumulator floats per thread
    constexpr int KSTEPS_QK = D / 16;
    constexpr int KSTEPS_PV = BLOCK_N / 16;
    constexpr int NP = KSTEPS_PV * 4;     // packed bf16x2 registers of P
    constexpr int COL_BLOCKS = D / 64;    // TMA boxes per tile
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(STAGES == 2 || STAGES == 3, "2 or 3 K/V buffers");
    static_assert(BLOCK_N == 128 || BLOCK_N == 192, "tiles of 128 or 192 keys");
    // Barriers: q_full, k_full[S], v_full[S], k_empty[S], v_empty[S].
    constexpr int BAR_BYTES = 8 * (1 + 4 * STAGES);
    static_assert(QB + 2 * STAGES * KVB + BAR_BYTES + 1024 <= {{SHARED_BYTES}},
                  "shared layout larger than the launch size computed by codegen");
    constexpr unsigned int V_LBO = BLOCK_N * 128, V_SBO = 1024;

    extern __shared__ unsigned char {{NAME}}_smem[];
    const unsigned int smem_raw = ws_smem_addr({{NAME}}_smem);
    const unsigned int sQ = (smem_raw + 1023u) & ~1023u;
    const unsigned int sK = sQ + QB;
    const unsigned int sV = sK + STAGES * KVB;
    const unsigned int bars = sV + STAGES * KVB;
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
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        // ---- Producer. ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (tid == 0) {
            ws_prefetch_map(&tq);
            ws_prefetch_map(&tk);
            ws_prefetch_map(&tv);
            ws_mbar_expect_tx(q_full, QB);
#pragma unroll
            for (int c = 0; c < COL_BLOCKS; ++c) {
                ws_tma_load_4d(sQ + c * BLOCK_M * 128, &tq, q_full, c * 64, h, m0, b);
            }
            for (int j = 0; j < n_tiles; ++j) {
                const int st = j % STAGES;
                // Phase parity of the buffer's j / STAGES-th reuse; a fresh
                // barrier counts its "previous" phase (parity 1) as complete.
                const unsigned int free_parity = ((j / STAGES) & 1) ^ 1;
                ws_mbar_wait(k_empty(st), free_parity);
                ws_mbar_expect_tx(k_full(st), KVB);
#pragma unroll
                for (int c = 0; c < COL_BLOCKS; ++c) {
                    ws_tma_load_4d(sK + st * KVB + c * BLOCK_N * 128, &tk, k_full(st), c * 64, h,
                                   (j0 + j) * BLOCK_N, b);
                }
                ws_mbar_wait(v_empty(st), free_parity);
                ws_mbar_expect_tx(v_full(st), KVB);
#pragma unroll
                for (int c = 0; c < COL_BLOCKS; ++c) {
                    ws_tma_load_4d(sV + st * KVB + c * BLOCK_N * 128, &tv, v_full(st), c * 64, h,
                                   (j0 + j) * BLOCK_N, b);
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
    // Ping-pong: named barrier 1 + cw is "warpgroup cw may issue"; each
    // warpgroup syncs on its own (256 = its 128 threads + the other's 128
    // arrivals) and, once its GEMMs are issued, arrives on the other's.
    auto turn_wait = [&]() { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + cw) : "memory"); };
    auto turn_pass = [&]() { asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - cw) : "memory"); };
    if (cw == 1) turn_pass();  // warpgroup 0 goes first

    const unsigned long long desc_q = ws_desc_sw128(sQ + cw * 64 * 128, 16, 1024);
    const unsigned long long desc_k0 = ws_desc_sw128(sK, 16, 1024);
    const unsigned long long desc_v0 = ws_desc_sw128(sV, V_LBO, V_SBO);
    constexpr unsigned long long KV_STEP = KVB >> 4;

    float acc_o[NO];
#pragma unroll
    for (int i = 0; i < NO; ++i) acc_o[i] = 0.0f;
    float s[NS];
    unsigned int pa[NP];
    const float NEG_INF = __int_as_float(0xff800000);
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.0f, 0.0f};
    const float scale_log2 = scale * 1.4426950408889634f;

    // The GEMMs' shared-memory descriptors, computed (and pinned in
    // registers) before the first wgmma of a group is issued: ptxas
    // serializes wgmmas whose input registers are defined by other
    // instructions between them.
    struct QkDescs {
        unsigned long long q[KSTEPS_QK], k[KSTEPS_QK];
    };
    struct PvDescs {
        unsigned long long v[KSTEPS_PV];
    };
    auto qk_descs = [&](int buf) {
        QkDescs d;
        const unsigned long long dk = desc_k0 + (unsigned long long)buf * KV_STEP;
#pragma unroll
        for (int kk = 0; kk < KSTEPS_QK; ++kk) {
            d.q[kk] = desc_q + (((kk >> 2) * (BLOCK_M * 128) + (kk & 3) * 32) >> 4);
            d.k[kk] = dk + (((kk >> 2) * (BLOCK_N * 128) + (kk & 3) * 32) >> 4);
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
            d.v[kk] = dv + ((kk * 16 * 128) >> 4);
            ws_reg_fence(d.v[kk]);
        }
        return d;
    };
    auto issue_qk = [&](const QkDescs& d) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_QK; ++kk) {
            if constexpr (BLOCK_N == 128) {
                ws_wgmma_ss_n128(s, d.q[kk], d.k[kk], kk > 0 ? 1 : 0);
            } else {
                ws_wgmma_ss_n192(s, d.q[kk], d.k[kk], kk > 0 ? 1 : 0);
            }
        }
    };
    auto issue_pv = [&](const PvDescs& d, const unsigned int* p) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            if constexpr (D == 128) {
                ws_wgmma_rs_n128_tb(acc_o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                                    d.v[kk]);
            } else {
                ws_wgmma_rs_n64_tb(acc_o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                                   d.v[kk]);
            }
        }
    };
    // Online softmax of tile j in s: P = exp2(S * scale_log2 - max) into pn
    // with one FFMA per score (the max of the scaled scores is
    // scale_log2 * max(S) for a non-negative scale, scale_log2 * min(S)
    // otherwise: a uniform branch); masked keys are left out of the max
    // through +-inf and get P = 0 after the exp2 (0 * inf would be NaN).
    // The rescale factors of the previous accumulators go to alpha (0 on
    // the first tile).
    auto softmax = [&](int j, float* alpha) {
        const int kv0 = j * BLOCK_N;
        const bool tail = kv0 + BLOCK_N > seq_kv;
        const bool pos = scale_log2 >= 0.0f;
        if (tail) {
            const float fill = pos ? NEG_INF : -NEG_INF;
#pragma unroll
            for (int n = 0; n < NS / 4; ++n) {
                const int key = kv0 + n * 8 + 2 * t;
                if (key >= seq_kv) s[4 * n] = s[4 * n + 2] = fill;
                if (key + 1 >= seq_kv) s[4 * n + 1] = s[4 * n + 3] = fill;
            }
        }
        // Both rows at once, with four partial maxima and sums per row:
        // short dependency chains for a warp that has few others to hide
        // latency behind.
        float mx[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float part[4] = {s[2 * r], s[2 * r], s[2 * r], s[2 * r]};
            if (pos) {
#pragma unroll
                for (int n = 0; n < NS / 4; ++n) {
                    part[n & 3] = fmaxf(part[n & 3], fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
                }
                mx[r] = fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3]));
            } else {
#pragma unroll
                for (int n = 0; n < NS / 4; ++n) {
                    part[n & 3] = fminf(part[n & 3], fminf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
                }
                mx[r] = fminf(fminf(part[0], part[1]), fminf(part[2], part[3]));
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(row_max[r], ws_quad_max(mx[r] * scale_log2));
            alpha[r] = ws_ex2(row_max[r] - mx[r]);
            row_max[r] = mx[r];
        }
        const float neg_m[2] = {-mx[0], -mx[1]};
#pragma unroll
        for (int n = 0; n < NS / 4; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[4 * n + i] = ws_ex2(fmaf(s[4 * n + i], scale_log2, neg_m[i >> 1]));
            }
        }
        if (tail) {
#pragma unroll
            for (int n = 0; n < NS / 4; ++n) {
                const int key = kv0 + n * 8 + 2 * t;
                if (key >= seq_kv) s[4 * n] = s[4 * n + 2] = 0.0f;
                if (key + 1 >= seq_kv) s[4 * n + 1] = s[4 * n + 3] = 0.0f;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int n = 0; n < NS / 4; ++n) part[n & 3] += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
            row_sum[r] = row_sum[r] * alpha[r] + ((part[0] + part[1]) + (part[2] + part[3]));
        }
    };
    // P (the softmax'ed s) packed to bf16 pairs: the A fragments of P.V.
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            pa[4 * kk + 0] = ws_pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
            pa[4 * kk + 1] = ws_pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
            pa[4 * kk + 2] = ws_pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
            pa[4 * kk + 3] = ws_pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
        }
    };
    auto fence_acc_p = [&](unsigned int* p) {
#pragma unroll
        for (int i = 0; i < NO; ++i) ws_reg_fence(acc_o[i]);
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
    } else {
        turn_wait();
        turn_pass();
    }
    // Consume the last pass of warpgroup 1 so no named barrier is left half
    // arrived.
    if (cw == 0) turn_wait();

    if constexpr (PART) {
        const float l[2] = {ws_quad_sum(row_sum[0]), ws_quad_sum(row_sum[1])};
        ws_split_store<D>(part, acc_o, 1.0f, cw * 64 + wrow + g, t, row_max, l);
    } else {
        // ---- Epilogue: O / l -> bf16, staged in this warpgroup's own rows of
        // the Q tile (only its own, completed, wgmmas read them). ----
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float l = ws_quad_sum(row_sum[r]);
            inv[r] = (l > 0.0f) ? 1.0f / l : 0.0f;  // seq_kv == 0 -> zeros
        }
        ws_store_output<D>({{NAME}}_smem + (sQ - smem_raw), acc_o, inv, o, seq_q, heads, m0, h, b,
                           cw, wrow, g, t, ctid);
    }
}

extern "C" __global__ void __launch_bounds__(384, 1)
{{NAME}}(const __grid_constant__ FaTensorMap tq, const __grid_constant__ FaTensorMap tk,
         const __grid_constant__ FaTensorMap tv, __nv_bfloat16* __restrict__ o, int seq_q,
         int seq_kv, int heads, float scale) {
    {{NAME}}_cta<false>(tq, tk, tv, o, nullptr, seq_q, seq_kv, heads, scale, blockIdx.x * 128,
                        blockIdx.y, blockIdx.z, 0, (seq_kv + {{BLOCK_N}} - 1) / {{BLOCK_N}});
}

// The query tiles of the last wave, split over their keys (so that they
// fill the wave instead of leaving most SMs idle): CTA x of the grid
// (tiles * kv_splits, heads, batch) runs query tile q_tile_base +
// x / kv_splits against key segment x % kv_splits (ws_split_segment;
// kv_splits <= the number of key tiles) and writes its part to part, at
// its index in the grid (ws_split_slot). Same ABI as the whole-tile kernel
// otherwise.
extern "C" __global__ void __launch_bounds__(384, 1)
{{NAME}}_part(const __grid_constant__ FaTensorMap tq, const __grid_constant__ FaTensorMap tk,
              const __grid_constant__ FaTensorMap tv, float* __restrict__ part, int seq_q,
              int seq_kv, int heads, float scale, int q_tile_base, int kv_splits) {
    int j0, n;
    ws_split_segment((seq_kv + {{BLOCK_N}} - 1) / {{BLOCK_N}}, kv_splits, &j0, &n);
    {{NAME}}_cta<true>(tq, tk, tv, nullptr, ws_split_slot<{{HEAD_DIM}}>(part), seq_q, seq_kv,
                       heads, scale, (q_tile_base + blockIdx.x / kv_splits) * 128, blockIdx.y,
                       blockIdx.z, j0, n);
}

// Combines {{NAME}}_part's kv_splits results of each query row into o
// (ws_split_merge).
extern "C" __global__ void __launch_bounds__(128)
{{NAME}}_merge(const float* __restrict__ part, __nv_bfloat16* __restrict__ o, int seq_q,
               int heads, int q_tile_base, int kv_splits) {
    ws_split_merge<{{HEAD_DIM}}>(part, o, seq_q, heads, q_tile_base, kv_splits);
}
