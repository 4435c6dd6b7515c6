// Helpers shared by the warp-specialized attention kernels (attention.cu,
// attention_fp8.cu): mbarriers, TMA, wgmma fences and descriptors and the
// softmax primitives. Rendered in place of their
// COMMON placeholder; guarded so that several kernels can share one
// translation unit.
#ifndef FLUXC_FA_WS_HELPERS
#define FLUXC_FA_WS_HELPERS

// The 128-byte opaque CUtensorMap, passed by value as a __grid_constant__
// parameter (its address is then valid for the TMA unit).
struct __align__(64) FaTensorMap {
    unsigned long long opaque[16];
};

static __device__ __forceinline__ unsigned int ws_smem_addr(const void* p) {
    return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

static __device__ __forceinline__ void ws_mbar_init(unsigned int bar, unsigned int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

static __device__ __forceinline__ void ws_mbar_expect_tx(unsigned int bar, unsigned int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void ws_mbar_arrive(unsigned int bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Blocks until the phase of parity `parity` of the barrier has completed
// (the retry loop lives inside the asm block).
static __device__ __forceinline__ void ws_mbar_wait(unsigned int bar, unsigned int parity) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "WS_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WS_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

// TMA: the box at coordinates (c0, c1, c2, c3) of the 4-D tensor map into
// shared memory at dst, completing `bar`'s transaction bytes.
static __device__ __forceinline__ void ws_tma_load_4d(unsigned int dst, const FaTensorMap* map,
                                                      unsigned int bar, int c0, int c1, int c2,
                                                      int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
        "r"(bar)
        : "memory");
}

static __device__ __forceinline__ void ws_prefetch_map(const FaTensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(map))
                 : "memory");
}

static __device__ __forceinline__ void ws_wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void ws_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void ws_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keep a register value in program order relative to the (volatile) wgmma
// issue / wait statements.
static __device__ __forceinline__ void ws_reg_fence(float& x) {
    asm volatile("" : "+f"(x)::"memory");
}
static __device__ __forceinline__ void ws_reg_fence(unsigned int& x) {
    asm volatile("" : "+r"(x)::"memory");
}
static __device__ __forceinline__ void ws_reg_fence(unsigned long long& x) {
    asm volatile("" : "+l"(x)::"memory");
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle mode:
// bits 0-13 start address >> 4, 16-29 leading byte offset >> 4,
// 32-45 stride byte offset >> 4, 49-51 base offset (0: every swizzle atom
// is 1024-byte aligned), 62-63 swizzle mode (1 = 128B).
static __device__ __forceinline__ unsigned long long ws_desc_sw128(unsigned int addr,
                                                                   unsigned int lbo,
                                                                   unsigned int sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) |
           ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}

static __device__ __forceinline__ float ws_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

static __device__ __forceinline__ unsigned int ws_pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned int*>(&v);
}

static __device__ __forceinline__ float ws_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}

// (The fp8 kernel sums its rows on the tensor cores: unused there.)
[[maybe_unused]] static __device__ __forceinline__ float ws_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// The epilogue both tensor-core kernels share: a consumer warpgroup (cw)
// writes its 64 rows of O (the wgmma accumulator layout: acc_o[4 n + 2 r +
// {0, 1}] is row 64 cw + wrow + g + 8 r, columns 8 n + 2 t + {0, 1}) times
// inv[r], rounded to bf16, into a 128-row staging tile in shared memory
// (D / 64 blocks of 128-byte rows, 128-byte swizzle; only this warpgroup
// reads its rows), then stores those rows below seq_q to o (contiguous
// [batch, seq_q, heads, D]) in 16-byte chunks. Query rows m0.. of head h of
// batch b; named barrier 3 + cw syncs the warpgroup.
template <int D>
static __device__ __forceinline__ void ws_store_output(unsigned char* tile, const float* acc_o,
                                                       const float* inv,
                                                       __nv_bfloat16* __restrict__ o, int seq_q,
                                                       int heads, int m0, int h, int b, int cw,
                                                       int wrow, int g, int t, int ctid) {
    constexpr int TILE_ROWS = 128;
    constexpr int CPR = D / 8;  // 16-byte chunks per row
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = cw * 64 + wrow + g + 8 * r;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int off = (n >> 3) * (TILE_ROWS * 128) + row * 128 +
                            (((n & 7) ^ (row & 7)) << 4) + t * 4;
            *reinterpret_cast<unsigned int*>(tile + off) = ws_pack_bf16x2(
                acc_o[4 * n + 2 * r] * inv[r], acc_o[4 * n + 2 * r + 1] * inv[r]);
        }
    }
    asm volatile("bar.sync %0, 128;\n" ::"r"(3 + cw) : "memory");
    const long long row_stride = (long long)heads * D;
    __nv_bfloat16* og = o + ((long long)b * seq_q * heads + h) * D;
#pragma unroll
    for (int i = 0; i < 64 * CPR / 128; ++i) {
        const int c = i * 128 + ctid;
        const int r = cw * 64 + c / CPR;
        const int jj = c % CPR;
        const int row = m0 + r;
        if (row < seq_q) {
            const int off = (jj >> 3) * (TILE_ROWS * 128) + r * 128 + (((jj & 7) ^ (r & 7)) << 4);
            *reinterpret_cast<uint4*>(og + (long long)row * row_stride + jj * 8) =
                *reinterpret_cast<const uint4*>(tile + off);
        }
    }
}

// ---- Query tiles split over their keys (the runtime's attention_split) ----
// A part CTA runs one 128-row query tile against one key segment and
// writes ws_part_floats(D) floats: its unnormalized O (128 x D, row-major),
// the 128 row maxima m (in the log2 units of the kernel's exponentials) and
// the 128 row sums l of the same exponentials. Rows past seq_q are written
// too; the merge skips them.
static __device__ __forceinline__ constexpr long long ws_part_floats(int d) {
    return 128LL * (d + 2);
}

// Key tiles [*j0, *j0 + *n) of part CTA blockIdx.x: segment
// blockIdx.x % kv_splits of kv_splits near-equal ranges of n_all tiles
// (each non-empty: kv_splits <= n_all); its query tile is
// q_tile_base + blockIdx.x / kv_splits.
static __device__ __forceinline__ void ws_split_segment(int n_all, int kv_splits, int* j0,
                                                        int* n) {
    const int seg = blockIdx.x % kv_splits;
    *j0 = seg * n_all / kv_splits;
    *n = (seg + 1) * n_all / kv_splits - *j0;
}

// This part CTA's result, at its index in the part grid (x fastest).
template <int D>
static __device__ __forceinline__ float* ws_split_slot(float* part) {
    const long long cta =
        blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    return part + cta * ws_part_floats(D);
}

// Stores a consumer thread's share of the part: its O accumulator (the
// wgmma layout: acc_o[4 n + 2 r + {0, 1}] is row row0 + 8 r, columns
// 8 n + 2 t + {0, 1}) times o_scale, and, from the quad's first thread,
// the whole-row m[r] and l[r].
template <int D>
static __device__ __forceinline__ void ws_split_store(float* slot, const float* acc_o,
                                                      float o_scale, int row0, int t,
                                                      const float* m, const float* l) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *reinterpret_cast<float2*>(slot + row * D + 8 * n + 2 * t) =
                make_float2(acc_o[4 * n + 2 * r] * o_scale, acc_o[4 * n + 2 * r + 1] * o_scale);
        }
        if (t == 0) {
            slot[128 * D + row] = m[r];
            slot[128 * D + 128 + row] = l[r];
        }
    }
}

// The merge kernel's body: combines the kv_splits parts of each query row,
// with M = max_s m_s, O = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s,
// rounded to bf16 into o (contiguous [batch, seq_q, heads, D]). Grid
// (tiles * 32, heads, batch) with the part launch's tiles, q_tile_base
// and kv_splits; 128 threads, one warp per row, each lane D / 32 adjacent
// columns.
template <int D>
static __device__ __forceinline__ void ws_split_merge(const float* __restrict__ part,
                                                      __nv_bfloat16* __restrict__ o, int seq_q,
                                                      int heads, int q_tile_base,
                                                      int kv_splits) {
    constexpr long long PART_FLOATS = ws_part_floats(D);
    constexpr int C = D / 32;
    const int tile = blockIdx.x / 32;
    const int r = (blockIdx.x % 32) * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int row = (q_tile_base + tile) * 128 + r;
    if (row >= seq_q) return;
    const long long part_x = (long long)(gridDim.x / 32) * kv_splits;  // the part grid's x
    const float* first =
        part + ((blockIdx.y + (long long)gridDim.y * blockIdx.z) * part_x +
                (long long)tile * kv_splits) * PART_FLOATS;
    float m_all = __int_as_float(0xff800000);
    for (int s = 0; s < kv_splits; ++s) m_all = fmaxf(m_all, first[s * PART_FLOATS + 128 * D + r]);
    float acc[C];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
    float l = 0.0f;
    for (int s = 0; s < kv_splits; ++s) {
        const float* p = first + s * PART_FLOATS;
        const float m = p[128 * D + r];
        // Every segment has a key, so m and m_all are finite.
        const float w = (m == m_all) ? 1.0f : exp2f(m - m_all);
        l += w * p[128 * D + 128 + r];
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] += w * p[r * D + lane * C + c];
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    __nv_bfloat16* out =
        o + (((long long)blockIdx.z * seq_q + row) * heads + blockIdx.y) * D + lane * C;
#pragma unroll
    for (int c = 0; c < C; ++c) out[c] = __float2bfloat16_rn(acc[c] * inv);
}

#endif  // FLUXC_FA_WS_HELPERS
