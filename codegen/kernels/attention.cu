// fluxc flash-attention forward kernel template (bf16 in/out, f32 accumulate),
// Hopper warpgroup MMA (wgmma, sm_90a) version.
//
// Rendered by codegen/src/attention.rs, which replaces these placeholders (each
// written in the source as its name in double curly braces):
//   NAME         kernel symbol, e.g. attention_d128_bf16
//   HEAD_DIM     head dimension D (64 or 128)
//   BLOCK_M      query rows per CTA (64 per warpgroup)
//   BLOCK_N      keys per main-loop iteration
//   NUM_WARPS    warps per CTA (BLOCK_M / 16)
//   SHARED_BYTES dynamic shared memory the runtime passes at launch
//
// out[b, s, h, :] = softmax(q[b, s, h, :] . k[b, :, h, :]^T * scale) . v[b, :, h, :]
// non-causal, no mask; q/k/v/o are contiguous [batch, seq, heads, D] bf16.
//
// Algorithm (FlashAttention-3 style forward on Hopper tensor cores):
//   * CTA (blockIdx.x, blockIdx.y, blockIdx.z) = (query tile, head, batch);
//     BLOCK_M = 128 query rows, two warpgroups (2 x 128 threads), warpgroup
//     w owns query rows [64w, 64w + 64) and runs its own online softmax.
//   * S = Q.K^T: wgmma.m64n128k16 (BLOCK_N = 128 keys per tile), A = Q and
//     B = K both read by the tensor cores straight from shared memory
//     (matrix descriptors, K-major, 128-byte swizzle), f32 accumulators.
//   * O += P.V: wgmma.m64n{D}k16 with A = P from registers (the f32 S
//     accumulator fragment of a warpgroup is exactly its bf16 A fragment
//     once packed in pairs) and B = V from shared memory (N-major, i.e.
//     imm-trans-b = 1, 128-byte swizzle).
//   * Pipelining inside a warpgroup: one step issues S_j = Q.K_j^T and
//     O += P_{j-1}.V_{j-1} back to back, waits for S_j only, runs the
//     softmax of S_j while the tensor cores still work on P_{j-1}.V_{j-1},
//     then waits for that and rescales O.
//   * Ping-pong between the warpgroups: warpgroup 1 runs half a step behind
//     warpgroup 0 (see the schedule in the kernel), so the tensor cores
//     alternate between them and each softmax overlaps the other
//     warpgroup's GEMMs.
//   * K and V tiles sit in 3 buffers each, filled with cp.async straight
//     into the swizzled layout, each warpgroup copying half the rows of a
//     tile. A copying thread waits for its own copies (cp.async.wait_group)
//     and makes them visible to the tensor cores' async proxy
//     (fence.proxy.async.shared::cta) before the CTA barrier that publishes
//     them; a buffer is refilled only after every wgmma reading it has been
//     waited for (wgmma.wait_group) and a barrier says so.
//   * Softmax in base 2 (ex2.approx) with one FFMA per score
//     (S * scale*log2(e) - running max); any sign of `scale` works; keys >=
//     seq_kv (only in the last tile, whose K/V rows past the end are
//     zero-filled) are left out of the max and get P = 0.
//   * Epilogue: O / l rounded to bf16, staged through the Q tile (each
//     warpgroup writes only its own rows, which only its own wgmmas read),
//     stored with 16-byte row-predicated writes.
//
// Shared memory (byte offsets from a 1024-byte aligned base; the launch size
// includes 1024 bytes of slack for that alignment):
//   sQ             : BLOCK_M x D            [0, QB)
//   sK[0], sK[1], sK[2] : BLOCK_N x D each  [QB, QB + 3 KVB)
//   sV[0], sV[1], sV[2] : BLOCK_N x D each  [QB + 3 KVB, QB + 6 KVB)
// (229 376 + 1024 bytes for D = 128, 114 688 + 1024 for D = 64.)
// Every tile of R rows x D columns is stored as D/64 column blocks of
// R rows x 128 bytes (64 bf16); block c starts at c * R * 128. Inside a block
// row r starts at r * 128 and its 16-byte chunk j (columns 8j..8j+7) sits at
// chunk position j ^ (r & 7): the 128-byte swizzle of the wgmma shared-memory
// matrix layout (Swizzle<3,4,3> on byte addresses, pattern repeating every
// 1024 bytes, so every block starts 1024-byte aligned). For Q and K (rows =
// M/N index, columns = the K dimension of the MMA) this is the canonical
// K-major layout: 8-row groups SBO = 1024 bytes apart. For V (rows = keys =
// the K dimension of P.V, columns = head dim = N) it is the canonical
// N-major layout: 8-key groups SBO = 1024 bytes apart, 64-column blocks
// LBO = BLOCK_N * 128 bytes apart.
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
// Requirements on the caller: the four pointers are 16-byte aligned;
// gridDim = (ceil(seq_q / BLOCK_M), heads, batch); blockDim = NUM_WARPS*32;
// dynamic shared memory = SHARED_BYTES (> 48 KiB: raise the attribute).

#include <cuda_bf16.h>


#ifndef FLUXC_FA3_HELPERS
#define FLUXC_FA3_HELPERS

// Shared-memory address as the 32-bit offset that cp.async / wgmma take.
static __device__ __forceinline__ unsigned int fa_smem_addr(const void* p) {
    return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; src_bytes = 0 zero-fills the 16 bytes
// without reading global memory (callers still pass an in-range address).
static __device__ __forceinline__ void fa_cp_async_16(unsigned int dst, const void* src,
                                                      unsigned int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void fa_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
static __device__ __forceinline__ void fa_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Make this thread's completed generic-proxy shared-memory writes (cp.async
// included) visible to later async-proxy (wgmma) reads.
static __device__ __forceinline__ void fa_fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

static __device__ __forceinline__ void fa_wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void fa_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Wait until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
static __device__ __forceinline__ void fa_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pin a register value in program order relative to the (volatile) wgmma
// issue / wait statements, so the compiler never moves a read or write of
// an accumulator across them.
static __device__ __forceinline__ void fa_reg_fence(float& x) {
    asm volatile("" : "+f"(x)::"memory");
}
static __device__ __forceinline__ void fa_reg_fence(unsigned int& x) {
    asm volatile("" : "+r"(x)::"memory");
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle mode:
// bits 0-13 start address >> 4, 16-29 leading byte offset >> 4,
// 32-45 stride byte offset >> 4, 49-51 base offset (0: every swizzle atom
// is 1024-byte aligned), 62-63 swizzle mode (1 = 128B).
static __device__ __forceinline__ unsigned long long fa_desc_sw128(unsigned int addr,
                                                                   unsigned int lbo,
                                                                   unsigned int sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) |
           ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}

static __device__ __forceinline__ float fa_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two f32 -> one .b32 of two bf16 (round to nearest even); `lo` lands in the
// low 16 bits, which is the lower column index in every fragment.
static __device__ __forceinline__ unsigned int fa_pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned int*>(&v);
}

// Max / sum over the 4 lanes of a quad (the lanes that share rows g, g+8).
static __device__ __forceinline__ float fa_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}

static __device__ __forceinline__ float fa_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// Copy ROWS rows x D of a tile from global memory into the swizzled shared
// layout with THREADS threads (here: one warpgroup copies its 64-row half of
// a 128-row tile). Thread i of them copies 16-byte chunk column j = i % CPR
// of tile rows r0 + k * RS (r0 = first row of the half + i / CPR,
// RS = THREADS / CPR, k < ROWS / RS). The caller precomputes, per thread,
//   sdst = tile base + the offset of (tile row r0, chunk j) in the 128-row
//          swizzled tile (the swizzle term (j ^ r) & 7 is the same for every
//          k, since RS is a multiple of 8),
//   gsrc = global address of (token row0 + r0, column 8j),
//   gstep = RS token rows in elements,
//   rows_left = tokens from row0 + r0 to the end of the sequence.
// Rows at or past the end are zero-filled (src-size 0) from the in-range
// address `gsafe`. `full` (uniform) says the whole tile is in range.
template <int D, int THREADS, int ROWS>
static __device__ __forceinline__ void fa_load_rows(unsigned int sdst, const __nv_bfloat16* gsrc,
                                                    long long gstep, int rows_left, bool full,
                                                    const __nv_bfloat16* gsafe) {
    constexpr int CPR = D / 8;
    constexpr int RS = THREADS / CPR;
    constexpr int N = ROWS / RS;
    static_assert(THREADS % CPR == 0 && RS % 8 == 0 && ROWS % RS == 0, "tile copy shape");
    if (full) {
#pragma unroll
        for (int i = 0; i < N; ++i) fa_cp_async_16(sdst + i * RS * 128, gsrc + i * gstep, 16u);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const bool ok = i * RS < rows_left;
            fa_cp_async_16(sdst + i * RS * 128, ok ? gsrc + i * gstep : gsafe, ok ? 16u : 0u);
        }
    }
}

// d[0..64) (+)= A(64x16, smem desc) * B(16x128, smem desc); K-major A and B.
static __device__ __forceinline__ void fa_wgmma_ss_n128(float* d, unsigned long long desc_a,
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

// d[0..64) += A(64x16, registers a0..a3) * B(16x128, smem desc), B N-major
// (imm-trans-b = 1).
static __device__ __forceinline__ void fa_wgmma_rs_n128_tb(float* d, unsigned int a0,
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

// d[0..32) += A(64x16, registers a0..a3) * B(16x64, smem desc), B N-major
// (imm-trans-b = 1).
static __device__ __forceinline__ void fa_wgmma_rs_n64_tb(float* d, unsigned int a0,
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

#endif  // FLUXC_FA3_HELPERS


extern "C" __global__ void __launch_bounds__({{NUM_WARPS}} * 32, 1)
{{NAME}}(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
         const __nv_bfloat16* __restrict__ v, __nv_bfloat16* __restrict__ o, int seq_q,
         int seq_kv, int heads, float scale) {
    constexpr int D = {{HEAD_DIM}};
    constexpr int BLOCK_M = {{BLOCK_M}};
    constexpr int BLOCK_N = {{BLOCK_N}};
    constexpr int NUM_WARPS = {{NUM_WARPS}};
    constexpr int THREADS = NUM_WARPS * 32;
    constexpr int STAGES = 3;             // K and V buffers each (the schedule needs 3)
    constexpr int QB = BLOCK_M * D * 2;   // bytes of the Q tile
    constexpr int KVB = BLOCK_N * D * 2;  // bytes of one K or V tile
    constexpr int NS = BLOCK_N / 2;       // S accumulator floats per thread
    constexpr int NO = D / 2;             // O accumulator floats per thread
    constexpr int KSTEPS_QK = D / 16;
    constexpr int KSTEPS_PV = BLOCK_N / 16;
    constexpr int NP = KSTEPS_PV * 4;     // packed bf16x2 registers of P
    constexpr int CPR = D / 8;            // 16-byte chunks per row
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(BLOCK_N == 128, "S = Q.K^T is one m64n128 wgmma per k-step");
    static_assert(BLOCK_M == 128 && NUM_WARPS == 8, "two warpgroups of 64 query rows");
    static_assert(QB + 2 * STAGES * KVB + 1024 == {{SHARED_BYTES}},
                  "shared layout disagrees with the launch size computed by codegen");
    // V descriptor: LBO = distance between 64-column (head dim) blocks,
    // SBO = distance between 8-key groups.
    constexpr unsigned int V_LBO = BLOCK_N * 128, V_SBO = 1024;

    extern __shared__ unsigned char {{NAME}}_smem[];
    const unsigned int smem_raw = fa_smem_addr({{NAME}}_smem);
    const unsigned int sQ = (smem_raw + 1023u) & ~1023u;
    const unsigned int sK = sQ + QB;             // STAGES buffers
    const unsigned int sV = sK + STAGES * KVB;   // STAGES buffers

    const int tid = threadIdx.x;
    // Warpgroup (query rows [64wg, +64)), read through a shuffle so that the
    // compiler knows it is warp-uniform (branches on it must not look
    // divergent around wgmma).
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
    const int wrow = ((tid >> 5) & 3) * 16;  // warp's first row inside the warpgroup
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int t = lane & 3;

    const int m0 = blockIdx.x * BLOCK_M;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const long long row_stride = (long long)heads * D;
    const __nv_bfloat16* qg = q + ((long long)b * seq_q * heads + h) * D;
    const __nv_bfloat16* kg = k + ((long long)b * seq_kv * heads + h) * D;
    const __nv_bfloat16* vg = v + ((long long)b * seq_kv * heads + h) * D;
    __nv_bfloat16* og = o + ((long long)b * seq_q * heads + h) * D;

    const int n_tiles = (seq_kv + BLOCK_N - 1) / BLOCK_N;

    // Every tile copy is split by warpgroup: warpgroup w copies tile rows
    // [64w, 64w + 64) (in the Q tile: its own query rows). This thread's
    // part, see fa_load_rows.
    const int hp_r0 = 64 * wg + (tid & 127) / CPR;
    const int hp_j = (tid & 127) % CPR;
    const unsigned int hp_soff =
        (unsigned int)((hp_j >> 3) * (128 * 128) + hp_r0 * 128 + (((hp_j & 7) ^ (hp_r0 & 7)) << 4));
    const long long hp_goff = (long long)hp_r0 * row_stride + hp_j * 8;
    const long long hp_gstep = (long long)(128 / CPR) * row_stride;
    auto half_q = [&]() {
        fa_load_rows<D, 128, 64>(sQ + hp_soff, qg + (long long)m0 * row_stride + hp_goff,
                                    hp_gstep, seq_q - m0 - hp_r0, m0 + BLOCK_M <= seq_q,
                                    qg + hp_j * 8);
    };
    auto half_kv = [&](const __nv_bfloat16* src, unsigned int sbuf, int tile) {
        const int row0 = tile * BLOCK_N;
        fa_load_rows<D, 128, 64>(sbuf + hp_soff, src + (long long)row0 * row_stride + hp_goff,
                                    hp_gstep, seq_kv - row0 - hp_r0, row0 + BLOCK_N <= seq_kv,
                                    src + hp_j * 8);
    };
    // Prologue: P0 = Q + K_0 (both halves); P1 = warpgroup 1's halves of V_0
    // and K_1 (warpgroup 0 copies its halves at the start of interval 0).
    half_q();
    if (n_tiles > 0) half_kv(kg, sK, 0);
    fa_cp_async_commit();
    if (wg == 1) {
        if (n_tiles > 0) half_kv(vg, sV, 0);
        if (n_tiles > 1) half_kv(kg, sK + KVB, 1);
    }
    fa_cp_async_commit();
    fa_cp_async_wait<1>();
    fa_fence_proxy_async();
    __syncthreads();

    // Descriptors. Q (A of S = Q.K^T): this warpgroup's 64 rows; k-step kk
    // starts (kk / 4) column blocks and (kk % 4) * 32 bytes further.
    const unsigned long long desc_q = fa_desc_sw128(sQ + wg * 64 * 128, 16, 1024);
    const unsigned long long desc_k0 = fa_desc_sw128(sK, 16, 1024);
    const unsigned long long desc_v0 = fa_desc_sw128(sV, V_LBO, V_SBO);
    // Descriptor address fields count 16-byte units.
    constexpr unsigned long long KV_STEP = KVB >> 4;

    float acc_o[NO];
#pragma unroll
    for (int i = 0; i < NO; ++i) acc_o[i] = 0.0f;
    float s[NS];
    unsigned int pa[NP], pb[NP];
    const float NEG_INF = __int_as_float(0xff800000);
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.0f, 0.0f};  // this lane's partial sums
    const float scale_log2 = scale * 1.4426950408889634f;

    // S = Q . K_buf^T, issued (not waited for).
    auto issue_qk = [&](int buf) {
        const unsigned long long dk = desc_k0 + (unsigned long long)buf * KV_STEP;
#pragma unroll
        for (int kk = 0; kk < KSTEPS_QK; ++kk) {
            const unsigned long long off_q = ((kk >> 2) * (BLOCK_M * 128) + (kk & 3) * 32) >> 4;
            const unsigned long long off_k = ((kk >> 2) * (BLOCK_N * 128) + (kk & 3) * 32) >> 4;
            fa_wgmma_ss_n128(s, desc_q + off_q, dk + off_k, kk > 0 ? 1 : 0);
        }
    };
    // O += P . V_buf, issued (not waited for).
    auto issue_pv = [&](int buf, const unsigned int* p) {
        const unsigned long long dv = desc_v0 + (unsigned long long)buf * KV_STEP;
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            const unsigned long long off_v = (kk * 16 * 128) >> 4;
            if constexpr (D == 128) {
                fa_wgmma_rs_n128_tb(acc_o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                                    dv + off_v);
            } else {
                fa_wgmma_rs_n64_tb(acc_o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3],
                                   dv + off_v);
            }
        }
    };
    // Online softmax of tile j in s: scale, mask, new max, P = exp2(S - max)
    // packed into pn, running sums updated; returns the rescale factors of
    // the previous accumulators in alpha.
    auto softmax = [&](int j, unsigned int* pn, float* alpha) {
        const int kv0 = j * BLOCK_N;
        const bool tail = kv0 + BLOCK_N > seq_kv;
        // P = exp2(S * scale_log2 - max(S * scale_log2)) with one FFMA per
        // score: the max of the scaled scores is scale_log2 * max(S) for a
        // non-negative scale and scale_log2 * min(S) otherwise (a uniform
        // branch). Masked keys are left out of the max / min through +-inf
        // and their P forced to 0 after the exp2 (0 * inf would be NaN).
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
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx;
            if (pos) {
                mx = s[2 * r];
#pragma unroll
                for (int n = 0; n < NS / 4; ++n) {
                    mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
                }
            } else {
                mx = s[2 * r];
#pragma unroll
                for (int n = 0; n < NS / 4; ++n) {
                    mx = fminf(mx, fminf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
                }
            }
            // Every tile holds at least one valid key, so mx is finite and
            // mx * scale_log2 is the row max of the scaled scores.
            mx = fmaxf(row_max[r], fa_quad_max(mx * scale_log2));
            alpha[r] = fa_ex2(row_max[r] - mx);  // 0 on the first tile
            row_max[r] = mx;
            const float neg_m = -mx;
            float sum = 0.0f;
#pragma unroll
            for (int n = 0; n < NS / 4; ++n) {
                s[4 * n + 2 * r] = fa_ex2(fmaf(s[4 * n + 2 * r], scale_log2, neg_m));
                s[4 * n + 2 * r + 1] = fa_ex2(fmaf(s[4 * n + 2 * r + 1], scale_log2, neg_m));
            }
            if (tail) {
#pragma unroll
                for (int n = 0; n < NS / 4; ++n) {
                    const int key = kv0 + n * 8 + 2 * t;
                    if (key >= seq_kv) s[4 * n + 2 * r] = 0.0f;
                    if (key + 1 >= seq_kv) s[4 * n + 2 * r + 1] = 0.0f;
                }
            }
#pragma unroll
            for (int n = 0; n < NS / 4; ++n) sum += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
            row_sum[r] = row_sum[r] * alpha[r] + sum;
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            pn[4 * kk + 0] = fa_pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
            pn[4 * kk + 1] = fa_pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
            pn[4 * kk + 2] = fa_pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
            pn[4 * kk + 3] = fa_pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
        }
    };

    // ---- Ping-pong schedule. Interval j lies between CTA barriers B_j and
    // B_{j+1} (B_0 is the prologue's barrier); tile t lives in K / V buffer
    // t % 3.
    //   Warpgroup 0, interval j: issue S_j = Q.K_j^T and O += P_{j-1}.V_{j-1};
    //     copy its halves of K_{j+1} and V_j (buffers of K_{j-2} and V_{j-3});
    //     softmax of S_j while its P.V and warpgroup 1's GEMMs run; rescale.
    //   Warpgroup 1, interval j: finish tile j-1 (softmax of S_{j-1}, issued
    //     in interval j-1; wait for P_{j-2}.V_{j-2}; rescale) while
    //     warpgroup 0's GEMMs run; then issue S_j and P_{j-1}.V_{j-1}, which
    //     stay in flight across B_{j+1}, and copy its halves of K_{j+2} and
    //     V_{j+1} (buffers of K_{j-1} and V_{j-2}, which it retired just
    //     before; a warpgroup barrier makes sure all its warps did).
    // So K_j and V_{j-1} are read in intervals j (both warpgroups) and j+1
    // (warpgroup 1's wgmmas retire there) and are not overwritten before
    // that: by warpgroup 1 after its waits of interval j+1, by warpgroup 0 at
    // the start of interval j+2. Every copy is complete and published
    // (wait_group, fence.proxy.async, CTA barrier) at the barrier before the
    // first interval that reads it: warpgroup 0 waits for the group it
    // issued in the same interval, warpgroup 1 for the one it issued in the
    // previous interval (or in the prologue). ----
    auto publish_pp = [&]() {
        if (wg == 0) {
            fa_cp_async_wait<0>();
        } else {
            fa_cp_async_wait<1>();
        }
        fa_fence_proxy_async();
        __syncthreads();
    };
    auto rescale = [&](const float* alpha) {
#pragma unroll
        for (int n = 0; n < NO / 4; ++n) {
            acc_o[4 * n + 0] *= alpha[0];
            acc_o[4 * n + 1] *= alpha[0];
            acc_o[4 * n + 2] *= alpha[1];
            acc_o[4 * n + 3] *= alpha[1];
        }
    };
    auto fence_acc_p = [&](unsigned int* p) {
#pragma unroll
        for (int i = 0; i < NO; ++i) fa_reg_fence(acc_o[i]);
#pragma unroll
        for (int i = 0; i < NP; ++i) fa_reg_fence(p[i]);
    };
    // Softmax of the S just completed (tile jj) into pb while the P.V group
    // issued with it may still run; then wait for that, rescale, P = pb.
    auto softmax_rescale = [&](int jj) {
#pragma unroll
        for (int i = 0; i < NS; ++i) fa_reg_fence(s[i]);
        float alpha[2];
        softmax(jj, pb, alpha);
        fa_wgmma_wait<0>();
        fence_acc_p(pa);
#pragma unroll
        for (int i = 0; i < NP; ++i) fa_reg_fence(pb[i]);
        rescale(alpha);
#pragma unroll
        for (int i = 0; i < NP; ++i) pa[i] = pb[i];
    };
    // Both warpgroups run n_tiles intervals (one CTA barrier each); every
    // branch below is uniform per warpgroup. Each interval commits exactly
    // two wgmma groups per warpgroup (S, then P.V; the P.V group of the
    // first interval is empty), so "wait_group 1" always means "S done".
    if (n_tiles > 0) {
        if (wg == 0) {
            // Interval 0.
            fa_wgmma_fence();
            issue_qk(0);
            fa_wgmma_commit();
            fa_wgmma_commit();  // empty P.V group
            if (n_tiles > 1) half_kv(kg, sK + KVB, 1);
            half_kv(vg, sV, 0);
            fa_cp_async_commit();
            fa_wgmma_wait<1>();
            {
#pragma unroll
                for (int i = 0; i < NS; ++i) fa_reg_fence(s[i]);
                float alpha[2];
                softmax(0, pa, alpha);  // O is still zero: no rescale
                fa_wgmma_wait<0>();
            }
            publish_pp();
            for (int j = 1, st = 1; j < n_tiles; ++j) {
                const int st1 = st == 2 ? 0 : st + 1;
                fence_acc_p(pa);
                fa_wgmma_fence();
                issue_qk(st);
                fa_wgmma_commit();
                issue_pv(st == 0 ? 2 : st - 1, pa);
                fa_wgmma_commit();
                if (j + 1 < n_tiles) half_kv(kg, sK + st1 * KVB, j + 1);
                half_kv(vg, sV + st * KVB, j);
                fa_cp_async_commit();
                fa_wgmma_wait<1>();
                softmax_rescale(j);
                publish_pp();
                st = st1;
            }
        } else {
            // Loop iteration j issues S_j and P_{j-1}.V_{j-1} and the copies
            // of its halves of K_{j+2} and V_{j+1} (into the buffers of
            // K_{j-1} and V_{j-2}, retired by the previous iteration) late
            // in interval j, crosses barrier B_{j+1}, then finishes tile j
            // (softmax, rescale) early in interval j+1, while warpgroup 0's
            // GEMMs run. Nothing is in flight across the loop back edge.
            fa_wgmma_fence();
            issue_qk(0);
            fa_wgmma_commit();
            fa_wgmma_commit();  // empty P.V group
            if (n_tiles > 2) half_kv(kg, sK + 2 * KVB, 2);
            if (n_tiles > 1) half_kv(vg, sV + KVB, 1);
            fa_cp_async_commit();
            publish_pp();
            fa_wgmma_wait<1>();
            {
#pragma unroll
                for (int i = 0; i < NS; ++i) fa_reg_fence(s[i]);
                float alpha[2];
                softmax(0, pa, alpha);  // O is still zero: no rescale
                fa_wgmma_wait<0>();
            }
            for (int j = 1, st = 1; j < n_tiles; ++j) {
                const int st1 = st == 2 ? 0 : st + 1;
                const int st2 = st1 == 2 ? 0 : st1 + 1;
                // Every warp of this warpgroup is past its waits: K_{j-1}
                // and V_{j-2} are no longer read by anyone (warpgroup 0
                // finished with them before barrier B_j).
                asm volatile("bar.sync 1, 128;\n" ::: "memory");
                fence_acc_p(pa);
                fa_wgmma_fence();
                issue_qk(st);
                fa_wgmma_commit();
                issue_pv(st == 0 ? 2 : st - 1, pa);
                fa_wgmma_commit();
                if (j + 2 < n_tiles) half_kv(kg, sK + st2 * KVB, j + 2);
                if (j + 1 < n_tiles) half_kv(vg, sV + st1 * KVB, j + 1);
                fa_cp_async_commit();
                publish_pp();
                fa_wgmma_wait<1>();
                softmax_rescale(j);
                st = st1;
            }
        }
        // Last P.V (both warpgroups): V_{n-1} was published by the last
        // barrier.
        fence_acc_p(pa);
        fa_wgmma_fence();
        issue_pv((n_tiles - 1) % 3, pa);
        fa_wgmma_commit();
        fa_wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NO; ++i) fa_reg_fence(acc_o[i]);
    }
    fa_cp_async_wait<0>();  // (only empty groups can be left)

    // ---- Epilogue: O / l -> bf16 into this warpgroup's own rows of the Q
    // tile (same swizzled layout; only this warpgroup's wgmmas ever read
    // them and those have completed), then 16-byte row-predicated stores. ----
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = fa_quad_sum(row_sum[r]);
        inv[r] = (l > 0.0f) ? 1.0f / l : 0.0f;  // seq_kv == 0 -> zeros
    }
    unsigned char* sQ_ptr = {{NAME}}_smem + (sQ - smem_raw);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = wg * 64 + wrow + g + 8 * r;
#pragma unroll
        for (int n = 0; n < NO / 4; ++n) {
            const int off = (n >> 3) * (BLOCK_M * 128) + row * 128 + (((n & 7) ^ (row & 7)) << 4) +
                            t * 4;
            *reinterpret_cast<unsigned int*>(sQ_ptr + off) = fa_pack_bf16x2(
                acc_o[4 * n + 2 * r] * inv[r], acc_o[4 * n + 2 * r + 1] * inv[r]);
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < BLOCK_M * CPR / THREADS; ++i) {
        const int c = i * THREADS + tid;
        const int r = c / CPR;
        const int jj = c % CPR;
        const int row = m0 + r;
        if (row < seq_q) {
            const int off = (jj >> 3) * (BLOCK_M * 128) + r * 128 + (((jj & 7) ^ (r & 7)) << 4);
            *reinterpret_cast<uint4*>(og + (long long)row * row_stride + jj * 8) =
                *reinterpret_cast<const uint4*>(sQ_ptr + off);
        }
    }
}
