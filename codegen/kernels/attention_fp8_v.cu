// fluxc: V for the fp8 attention kernel (attention_fp8.cu), transposed and
// key-permuted.
//
// Rendered by codegen/src/attention_fp8.rs (placeholder: NAME).
//
//   vt[b, h, d, 16 q + L] = v8[b, 16 q + c(L), h, d]   for 16 q + c(L) < seq_kv
//   vt[b, h, d, p]        = 0                          for the padding up to Sp
// with c(L) = 8 ((L & 3) >> 1) + 2 (L >> 2) + (L & 1), the key order in which
// the attention kernel's P fragments hold a 16-key group (attention_fp8.cu
// says why), and Sp = seq_kv rounded up to 16.
//
// ABI: (const unsigned char* v8, unsigned char* vt, int seq_kv, int heads)
// v8: contiguous e4m3 [batch, seq_kv, heads, 128]; vt: [batch, heads, 128, Sp].
// grid = (ceil(Sp / 64), heads, batch), block = 256 threads, no dynamic
// shared memory. Every byte of vt is written, the padding included.
//
// Each CTA moves 64 keys x 128 dims of one head: coalesced 16-byte loads of
// the key rows into shared memory (rows padded to 132 bytes so that the
// column reads below spread over the banks), then each thread gathers 16
// permuted keys of one dim row and stores them as one 16-byte vector.

extern "C" __global__ void __launch_bounds__(256)
{{NAME}}(const unsigned char* __restrict__ v8, unsigned char* __restrict__ vt, int seq_kv,
         int heads) {
    constexpr int D = 128;
    constexpr int KEYS = 64;
    constexpr int STRIDE = D + 4;
    __shared__ __align__(16) unsigned char tile[KEYS * STRIDE];
    const int sp = (max(seq_kv, 1) + 15) / 16 * 16;  // as padded_keys
    const int key0 = blockIdx.x * KEYS;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int tid = threadIdx.x;

    // 64 rows x 8 chunks of 16 bytes: two per thread.
#pragma unroll
    for (int i = 0; i < KEYS * (D / 16) / 256; ++i) {
        const int c = i * 256 + tid;
        const int r = c >> 3;
        const int j = c & 7;
        const int key = key0 + r;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (key < seq_kv) {
            x = *reinterpret_cast<const uint4*>(v8 + (((long long)b * seq_kv + key) * heads + h) * D +
                                                j * 16);
        }
        unsigned int* dst = reinterpret_cast<unsigned int*>(tile + r * STRIDE + j * 16);
        dst[0] = x.x;
        dst[1] = x.y;
        dst[2] = x.z;
        dst[3] = x.w;
    }
    __syncthreads();

    // 128 dim rows x 4 groups of 16 keys: two per thread, consecutive
    // threads on consecutive dims.
    unsigned char* out = vt + (((long long)b * heads + h) * D) * sp;
#pragma unroll
    for (int i = 0; i < D * (KEYS / 16) / 256; ++i) {
        const int c = i * 256 + tid;
        const int d = c & (D - 1);
        const int q = c >> 7;
        const int p0 = key0 + q * 16;
        if (p0 >= sp) continue;
        unsigned int w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            unsigned int word = 0;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int l = 4 * k + e;
                const int src = q * 16 + 8 * ((l & 3) >> 1) + 2 * (l >> 2) + (l & 1);
                word |= (unsigned int)tile[src * STRIDE + d] << (8 * e);
            }
            w[k] = word;
        }
        *reinterpret_cast<uint4*>(out + (long long)d * sp + p0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}
