// Reference attention on CUDA cores, for any head width up to 256 and any
// storage type: one warp per query row, keys streamed with an online
// softmax. Used where the tensor-core kernel does not apply (f32 models,
// head widths other than 64/128); correctness, not speed, is its job.
// Same ABI as the tensor-core kernel; grid (ceil(seq_q / 8), heads, batch),
// 256 threads.
extern "C" __global__ void __launch_bounds__(256) {{NAME}}(
    const {{T}}* __restrict__ q, const {{T}}* __restrict__ k, const {{T}}* __restrict__ v,
    {{T}}* __restrict__ o, int seq_q, int seq_kv, int heads, float scale) {
    const int D = {{HEAD_DIM}};
    const int PER_LANE = (D + 31) / 32;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + threadIdx.x / 32;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    if (row >= seq_q) return;  // whole warps leave together
    float qv[PER_LANE];
    float acc[PER_LANE];
    const long long q_base = (((long long)b * seq_q + row) * heads + h) * D;
    #pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int d = lane + e * 32;
        qv[e] = d < D ? fx_load(q, q_base + d) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -__int_as_float(0x7f800000);
    float l = 0.0f;
    for (int j = 0; j < seq_kv; ++j) {
        const long long kv_base = (((long long)b * seq_kv + j) * heads + h) * D;
        float s = 0.0f;
        #pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const int d = lane + e * 32;
            if (d < D) s += qv[e] * fx_load(k, kv_base + d);
        }
        s = fx_group_sum(s, 32) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);
        const float p = expf(s - m_new);
        l = l * correction + p;
        #pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const int d = lane + e * 32;
            const float vv = d < D ? fx_load(v, kv_base + d) : 0.0f;
            acc[e] = acc[e] * correction + p * vv;
        }
        m = m_new;
    }
    #pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        const int d = lane + e * 32;
        if (d < D) fx_store(o, q_base + d, l > 0.0f ? acc[e] / l : 0.0f);
    }
}
