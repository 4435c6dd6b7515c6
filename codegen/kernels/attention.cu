// fluxc flash-attention forward kernel template (bf16 in/out, f32 accumulate).
//
// Rendered by codegen/src/attention.rs, which replaces these placeholders:
//   {{NAME}}         kernel symbol, e.g. attention_d128_bf16
//   {{HEAD_DIM}}     head dimension D (64 or 128)
//   {{BLOCK_M}}      query rows per CTA (16 per warp)
//   {{BLOCK_N}}      keys per main-loop iteration
//   {{NUM_WARPS}}    warps per CTA (BLOCK_M / 16)
//   {{SHARED_BYTES}} dynamic shared memory the runtime passes at launch
//
// out[b, s, h, :] = softmax(q[b, s, h, :] . k[b, :, h, :]^T * scale) . v[b, :, h, :]
// non-causal, no mask; q/k/v/o are contiguous [batch, seq, heads, D] bf16.
//
// Algorithm (FlashAttention-2 forward, sm_80-style warp MMA, runs on sm_90a):
//   * CTA (blockIdx.x, blockIdx.y, blockIdx.z) = (query tile, head, batch).
//   * Warp w owns query rows [w*16, w*16+16) of the tile; all warps share the
//     K/V tiles in shared memory. No cross-warp reduction is ever needed.
//   * The Q tile is staged through shared memory once and kept in registers
//     as mma A fragments for the whole kernel.
//   * K/V tiles of BLOCK_N keys are double buffered with cp.async: tile j+1
//     streams in while tile j is consumed. Rows past seq_kv are zero-filled
//     (cp.async src-size 0), so garbage never reaches the P.V product.
//   * S = Q.K^T (tensor cores, f32), scaled by scale*log2(e), out-of-range
//     keys set to -inf, online softmax in base 2 (exp2f), P rounded to bf16
//     in registers and fed straight back as the A operand of O += P.V.
//   * Epilogue: O / l rounded to bf16, staged through the (now idle) Q
//     shared-memory rows of the warp, stored with 16-byte row-predicated
//     writes.
//
// Shared memory layout (bf16 elements, every row padded by 8 elements =
// 16 bytes so that the 8 row addresses of one ldmatrix 8x8 matrix fall into
// 8 different 16-byte bank groups: row stride = 2*D+16 bytes = 16 (mod 128)):
//   sQ : BLOCK_M rows x (D + 8)          (Q tile, later the output tile)
//   sK : 2 buffers x BLOCK_N rows x (D + 8)
//   sV : 2 buffers x BLOCK_N rows x (D + 8)
//
// Requirements on the caller: the four pointers are 16-byte aligned (every
// row is 2*D bytes, a multiple of 16, so row starts are then aligned too);
// gridDim = (ceil(seq_q / BLOCK_M), heads, batch); blockDim = NUM_WARPS*32;
// dynamic shared memory = SHARED_BYTES.
//
// Notation for mma.m16n8k16 fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), per lane:
//   g = lane >> 2 (groupID), t = lane & 3 (threadID_in_group)
//   A (16x16, row-major), 4 x .b32 each holding 2 bf16 (low half = lower col):
//     a0: row g,   cols 2t, 2t+1      a1: row g+8, cols 2t, 2t+1
//     a2: row g,   cols 2t+8, 2t+9    a3: row g+8, cols 2t+8, 2t+9
//   B (16x8, "col" = element (k, n) with n the 8-wide dim), 2 x .b32:
//     b0: k rows 2t, 2t+1, col g      b1: k rows 2t+8, 2t+9, col g
//   C/D (16x8, f32), 4 floats:
//     c0, c1: row g,   cols 2t, 2t+1  c2, c3: row g+8, cols 2t, 2t+1
//
// ldmatrix.m8n8.x4 (.b16): lanes 8i..8i+7 supply the 8 row addresses of
// matrix i (16 contiguous bytes each); result register i holds, in lane L,
// row L/4, cols 2(L%4), 2(L%4)+1 of matrix i -- i.e. exactly the (row g,
// cols 2t..2t+1) pattern above. With .trans it holds row 2(L%4) and
// 2(L%4)+1 of column L/4 instead (the k-pair pattern of a B fragment when the
// stored rows are the k dimension).

#include <cuda_bf16.h>

#ifndef FLUXC_FA_HELPERS
#define FLUXC_FA_HELPERS

// Shared-memory address as the 32-bit offset that ldmatrix / cp.async take.
static __device__ __forceinline__ unsigned int fa_smem_addr(const void* p) {
    return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; src_bytes = 0 zero-fills the 16 bytes
// without reading global memory (the source address must still be valid-looking,
// callers pass a clamped in-range row).
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

static __device__ __forceinline__ void fa_ldmatrix_x4(unsigned int addr, unsigned int& r0,
                                                      unsigned int& r1, unsigned int& r2,
                                                      unsigned int& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

static __device__ __forceinline__ void fa_ldmatrix_x4_trans(unsigned int addr, unsigned int& r0,
                                                            unsigned int& r1, unsigned int& r2,
                                                            unsigned int& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// d += A(16x16 bf16) * B(16x8 bf16), f32 accumulators, fragments as above.
static __device__ __forceinline__ void fa_mma_bf16_16816(float* d, const unsigned int* a,
                                                         unsigned int b0, unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 -> one .b32 of two bf16 (round to nearest even); `lo` lands in the
// low 16 bits, which is the lower column index in every mma fragment.
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

// Copy a tile of `ROWS` rows x D bf16 from global (row r of the tile is token
// row0 + r, consecutive tokens `gstride` elements apart) into shared memory
// with row stride SSTRIDE elements; rows at or past `nrows` are zero-filled.
template <int ROWS, int D, int SSTRIDE, int THREADS>
static __device__ __forceinline__ void fa_load_tile(__nv_bfloat16* smem, const __nv_bfloat16* g,
                                                    long long gstride, int row0, int nrows) {
    constexpr int CHUNKS_PER_ROW = D / 8;  // 16-byte chunks
    constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
    static_assert(CHUNKS % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; ++i) {
        const int c = i * THREADS + threadIdx.x;
        const int r = c / CHUNKS_PER_ROW;
        const int col = (c % CHUNKS_PER_ROW) * 8;
        const int row = row0 + r;
        const bool ok = row < nrows;
        // Out-of-range rows read nothing (src-size 0) but still get an
        // in-range address (row 0 of this (b, h) slice) for good measure.
        const __nv_bfloat16* src = g + (ok ? (long long)row : 0LL) * gstride + col;
        fa_cp_async_16(fa_smem_addr(smem + r * SSTRIDE + col), src, ok ? 16u : 0u);
    }
}

#endif  // FLUXC_FA_HELPERS

extern "C" __global__ void __launch_bounds__({{NUM_WARPS}} * 32)
{{NAME}}(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
         const __nv_bfloat16* __restrict__ v, __nv_bfloat16* __restrict__ o, int seq_q,
         int seq_kv, int heads, float scale) {
    constexpr int D = {{HEAD_DIM}};
    constexpr int BLOCK_M = {{BLOCK_M}};
    constexpr int BLOCK_N = {{BLOCK_N}};
    constexpr int NUM_WARPS = {{NUM_WARPS}};
    constexpr int THREADS = NUM_WARPS * 32;
    constexpr int STRIDE = D + 8;  // padded smem row, elements
    constexpr int KSTEPS = D / 16;         // k-steps of S = Q.K^T
    constexpr int NTILES_S = BLOCK_N / 8;  // n8 tiles of S (keys)
    constexpr int KSTEPS_PV = BLOCK_N / 16;  // k-steps of O += P.V
    constexpr int NTILES_O = D / 8;        // n8 tiles of O (head dim)
    static_assert(BLOCK_M == NUM_WARPS * 16, "16 query rows per warp");
    static_assert(D % 16 == 0 && BLOCK_N % 16 == 0, "tile sizes must be multiples of 16");
    static_assert((BLOCK_M + 4 * BLOCK_N) * STRIDE * 2 == {{SHARED_BYTES}},
                  "shared layout disagrees with the launch size computed by codegen");

    extern __shared__ __align__(128) unsigned char {{NAME}}_smem[];
    __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>({{NAME}}_smem);
    __nv_bfloat16* sK = sQ + BLOCK_M * STRIDE;      // 2 buffers
    __nv_bfloat16* sV = sK + 2 * BLOCK_N * STRIDE;  // 2 buffers

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;  // fragment row (groupID)
    const int t = lane & 3;   // fragment column pair (threadID_in_group)

    const int m0 = blockIdx.x * BLOCK_M;  // first query row of this CTA
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    // Consecutive tokens of one (b, h) are heads*D elements apart.
    const long long row_stride = (long long)heads * D;
    const __nv_bfloat16* qg = q + ((long long)b * seq_q * heads + h) * D;
    const __nv_bfloat16* kg = k + ((long long)b * seq_kv * heads + h) * D;
    const __nv_bfloat16* vg = v + ((long long)b * seq_kv * heads + h) * D;
    __nv_bfloat16* og = o + ((long long)b * seq_q * heads + h) * D;

    const int n_tiles = (seq_kv + BLOCK_N - 1) / BLOCK_N;

    // ---- Prologue: group 0 = Q + K/V tile 0, group 1 = K/V tile 1. ----
    fa_load_tile<BLOCK_M, D, STRIDE, THREADS>(sQ, qg, row_stride, m0, seq_q);
    if (n_tiles > 0) {
        fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sK, kg, row_stride, 0, seq_kv);
        fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sV, vg, row_stride, 0, seq_kv);
    }
    fa_cp_async_commit();
    if (n_tiles > 1) {
        fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sK + BLOCK_N * STRIDE, kg, row_stride, BLOCK_N,
                                                  seq_kv);
        fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sV + BLOCK_N * STRIDE, vg, row_stride, BLOCK_N,
                                                  seq_kv);
    }
    fa_cp_async_commit();  // possibly empty group: keeps the wait counts uniform
    fa_cp_async_wait<1>();  // group 0 (Q, tile 0) has landed for this thread
    __syncthreads();        // ... and for every thread

    // ---- Q fragments: qa[kk] is the A fragment of rows [warp*16, +16),
    // cols [kk*16, +16). ldmatrix.x4 matrices: 0 = rows 0-7 / cols 0-7 (a0),
    // 1 = rows 8-15 / cols 0-7 (a1), 2 = rows 0-7 / cols 8-15 (a2),
    // 3 = rows 8-15 / cols 8-15 (a3). Lane L addresses row (L & 15) of the
    // warp's slice, col block (L >> 4) * 8: lanes 0-7 -> matrix 0,
    // 8-15 -> matrix 1, 16-23 -> matrix 2, 24-31 -> matrix 3. ----
    unsigned int qa[KSTEPS][4];
    {
        const __nv_bfloat16* base = sQ + (warp * 16 + (lane & 15)) * STRIDE + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            fa_ldmatrix_x4(fa_smem_addr(base + kk * 16), qa[kk][0], qa[kk][1], qa[kk][2],
                           qa[kk][3]);
        }
    }

    // Output accumulators: acc_o[nt] is the C fragment of rows g / g+8 of
    // the warp's slice and head-dim cols nt*8 + 2t, +1.
    float acc_o[NTILES_O][4];
#pragma unroll
    for (int nt = 0; nt < NTILES_O; ++nt) {
        acc_o[nt][0] = acc_o[nt][1] = acc_o[nt][2] = acc_o[nt][3] = 0.0f;
    }
    // Running max (base-2 logits) and this lane's partial row sums for rows
    // g (index 0) and g+8 (index 1). The max is quad-uniform; the sums are
    // per lane (their 16 columns of each tile) and quad-reduced at the end,
    // which is valid because every rescale factor is quad-uniform.
    const float NEG_INF = __int_as_float(0xff800000);
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.0f, 0.0f};
    const float scale_log2 = scale * 1.4426950408889634f;  // softmax via exp2

    // Per-lane ldmatrix offsets (elements) inside one K / V buffer.
    //   K (non-trans), for keys [nt*8, nt*8+16) and dims [kk*16, +16):
    //     matrix 0 = keys +0..7 / dims +0..7   -> b0 of n-tile nt
    //     matrix 1 = keys +0..7 / dims +8..15  -> b1 of n-tile nt
    //     matrix 2 = keys +8..15 / dims +0..7  -> b0 of n-tile nt+1
    //     matrix 3 = keys +8..15 / dims +8..15 -> b1 of n-tile nt+1
    //   B(k = dim, n = key) = K[key][dim]: a stored K row is one column n of
    //   B, so lane L gets key L/4, dims 2(L%4), +1 = (k rows 2t..2t+1, col g).
    const int k_lane_off = (((lane >> 4) << 3) + (lane & 7)) * STRIDE + ((lane >> 3) & 1) * 8;
    //   V (.trans), for keys [kk*16, +16) and dims [nt*8, nt*8+16):
    //     matrix 0 = keys +0..7 / dims +0..7   -> b0 of n-tile nt
    //     matrix 1 = keys +8..15 / dims +0..7  -> b1 of n-tile nt
    //     matrix 2 = keys +0..7 / dims +8..15  -> b0 of n-tile nt+1
    //     matrix 3 = keys +8..15 / dims +8..15 -> b1 of n-tile nt+1
    //   B(k = key, n = dim) = V[key][dim]: stored rows are the k dim, so the
    //   transposed load gives lane L keys 2(L%4), +1 of dim L/4 = (k rows
    //   2t..2t+1, col g).
    const int v_lane_off = (((lane >> 3) & 1) * 8 + (lane & 7)) * STRIDE + (lane >> 4) * 8;

    for (int j = 0; j < n_tiles; ++j) {
        const __nv_bfloat16* sKj = sK + (j & 1) * BLOCK_N * STRIDE;
        const __nv_bfloat16* sVj = sV + (j & 1) * BLOCK_N * STRIDE;

        // ---- S = Q . K^T for this tile: s[nt] = C fragment of keys
        // nt*8 + 2t, +1 (rows g, g+8). ----
        float s[NTILES_S][4];
#pragma unroll
        for (int nt = 0; nt < NTILES_S; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
            for (int nt = 0; nt < NTILES_S; nt += 2) {
                unsigned int b0, b1, b2, b3;
                fa_ldmatrix_x4(fa_smem_addr(sKj + k_lane_off + nt * 8 * STRIDE + kk * 16), b0, b1,
                               b2, b3);
                fa_mma_bf16_16816(s[nt], qa[kk], b0, b1);
                fa_mma_bf16_16816(s[nt + 1], qa[kk], b2, b3);
            }
        }

        // ---- Scale to base-2 logits, then mask keys >= seq_kv (only the
        // last tile can have any). Scaling first keeps -inf exact for any
        // sign of `scale`. ----
        const int kv0 = j * BLOCK_N;
#pragma unroll
        for (int nt = 0; nt < NTILES_S; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
        }
        if (kv0 + BLOCK_N > seq_kv) {
#pragma unroll
            for (int nt = 0; nt < NTILES_S; ++nt) {
                const int key = kv0 + nt * 8 + 2 * t;
                if (key >= seq_kv) s[nt][0] = s[nt][2] = NEG_INF;
                if (key + 1 >= seq_kv) s[nt][1] = s[nt][3] = NEG_INF;
            }
        }

        // ---- Online softmax. Row r = 0 uses c0, c1 (row g), r = 1 uses
        // c2, c3 (row g+8). ----
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = row_max[r];
#pragma unroll
            for (int nt = 0; nt < NTILES_S; ++nt) {
                mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            }
            mx = fa_quad_max(mx);
            // A row that has seen only masked keys keeps max -inf; subtract 0
            // then so exp2f(-inf - -inf) never produces NaN.
            const float m_use = (mx == NEG_INF) ? 0.0f : mx;
            const float alpha = exp2f(row_max[r] - m_use);  // 0 on the first tile
            row_max[r] = mx;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NTILES_S; ++nt) {
                s[nt][2 * r] = exp2f(s[nt][2 * r] - m_use);
                s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_use);
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
            for (int nt = 0; nt < NTILES_O; ++nt) {
                acc_o[nt][2 * r] *= alpha;
                acc_o[nt][2 * r + 1] *= alpha;
            }
        }

        // ---- O += P . V. The A fragment of P for keys [kk*16, +16) is made
        // of the S C fragments of n-tiles 2kk and 2kk+1:
        //   a0 = (row g,   keys 2t..+1)   = s[2kk][0..1]
        //   a1 = (row g+8, keys 2t..+1)   = s[2kk][2..3]
        //   a2 = (row g,   keys 8+2t..+1) = s[2kk+1][0..1]
        //   a3 = (row g+8, keys 8+2t..+1) = s[2kk+1][2..3]  ----
#pragma unroll
        for (int kk = 0; kk < KSTEPS_PV; ++kk) {
            unsigned int pa[4];
            pa[0] = fa_pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = fa_pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = fa_pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = fa_pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < NTILES_O; nt += 2) {
                unsigned int b0, b1, b2, b3;
                fa_ldmatrix_x4_trans(fa_smem_addr(sVj + v_lane_off + kk * 16 * STRIDE + nt * 8),
                                     b0, b1, b2, b3);
                fa_mma_bf16_16816(acc_o[nt], pa, b0, b1);
                fa_mma_bf16_16816(acc_o[nt + 1], pa, b2, b3);
            }
        }

        // ---- Pipeline: buffer j&1 is free once every warp is past here;
        // refill it with tile j+2, then wait for tile j+1. ----
        __syncthreads();
        if (j + 2 < n_tiles) {
            fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sK + (j & 1) * BLOCK_N * STRIDE, kg,
                                                      row_stride, (j + 2) * BLOCK_N, seq_kv);
            fa_load_tile<BLOCK_N, D, STRIDE, THREADS>(sV + (j & 1) * BLOCK_N * STRIDE, vg,
                                                      row_stride, (j + 2) * BLOCK_N, seq_kv);
        }
        fa_cp_async_commit();
        fa_cp_async_wait<1>();  // tile j+1 has landed
        __syncthreads();
    }
    fa_cp_async_wait<0>();  // nothing may still be writing shared memory

    // ---- Epilogue: O / l -> bf16 into the warp's own Q rows (only this
    // warp ever reads or writes them after the Q fragments were loaded),
    // then 16-byte predicated stores of those 16 rows. ----
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = fa_quad_sum(row_sum[r]);
        inv[r] = (l > 0.0f) ? 1.0f / l : 0.0f;  // seq_kv == 0 -> zeros
    }
    __nv_bfloat16* sO = sQ + warp * 16 * STRIDE;
#pragma unroll
    for (int nt = 0; nt < NTILES_O; ++nt) {
        const int col = nt * 8 + 2 * t;
        *reinterpret_cast<unsigned int*>(sO + g * STRIDE + col) =
            fa_pack_bf16x2(acc_o[nt][0] * inv[0], acc_o[nt][1] * inv[0]);
        *reinterpret_cast<unsigned int*>(sO + (g + 8) * STRIDE + col) =
            fa_pack_bf16x2(acc_o[nt][2] * inv[1], acc_o[nt][3] * inv[1]);
    }
    __syncwarp();
    constexpr int CHUNKS_PER_ROW = D / 8;
#pragma unroll
    for (int i = 0; i < 16 * CHUNKS_PER_ROW / 32; ++i) {
        const int c = i * 32 + lane;
        const int r = c / CHUNKS_PER_ROW;
        const int col = (c % CHUNKS_PER_ROW) * 8;
        const int row = m0 + warp * 16 + r;
        if (row < seq_q) {
            *reinterpret_cast<uint4*>(og + (long long)row * row_stride + col) =
                *reinterpret_cast<const uint4*>(sO + r * STRIDE + col);
        }
    }
}
