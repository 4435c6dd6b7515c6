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

static __device__ __forceinline__ float ws_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

#endif  // FLUXC_FA_WS_HELPERS
