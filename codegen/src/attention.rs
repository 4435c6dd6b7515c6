//! Flash-attention forward kernels (bf16, non-causal, no mask).
//!
//! [`render_attention`] instantiates the CUDA template `kernels/attention.cu`
//! for one head dimension (64 or 128). The kernel computes, for every batch
//! `b` and head `h`,
//!
//! ```text
//! o[b, :, h, :] = softmax(q[b, :, h, :] · k[b, :, h, :]ᵀ · scale) · v[b, :, h, :]
//! ```
//!
//! in one pass (FlashAttention-2 style online softmax), never materialising the
//! `seq_q × seq_kv` score matrix.
//!
//! # ABI
//!
//! ```text
//! extern "C" __global__ void attention_d{D}_bf16(
//!     const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
//!     __nv_bfloat16* o, int seq_q, int seq_kv, int heads, float scale)
//! ```
//!
//! * `q`, `o`: contiguous `[batch, seq_q, heads, D]`; `k`, `v`: contiguous
//!   `[batch, seq_kv, heads, D]`; element `(b, s, h, d)` sits at
//!   `((b * seq + s) * heads + h) * D + d`. All four pointers must be 16-byte
//!   aligned.
//! * grid = [`grid`] = `(ceil(seq_q / block_m), heads, batch)`, block =
//!   `threads` threads, dynamic shared memory = `shared_bytes` (above 48 KiB
//!   for both head dims, so the runtime must raise
//!   `cudaFuncAttributeMaxDynamicSharedMemorySize` first). Launch nothing when
//!   `seq_q == 0` (the grid would be empty); `seq_kv == 0` writes zeros.
//! * Sequence lengths need not be multiples of the tiles: query rows past
//!   `seq_q` are neither read nor written, keys past `seq_kv` are zero-filled
//!   in shared memory, left out of the row max and given probability 0.
//!
//! # Tiling
//!
//! Hopper-only (sm_90a): the kernel uses warpgroup MMAs (`wgmma`), in the
//! style of FlashAttention-3. One CTA handles `block_m` = 128 query rows of
//! one `(b, h)` with two warpgroups (256 threads), 64 rows each, so each
//! warpgroup runs its own online softmax. The main loop walks the keys in
//! tiles of 128:
//!
//! 1. `S = Q·Kᵀ` with `wgmma.m64n128k16` (bf16 in, f32 out), Q and K read by
//!    the tensor cores from shared memory (128-byte swizzled, K-major).
//! 2. `P = exp2(S · scale · log2 e − running max)` (one FFMA and one `ex2`
//!    per score), running sums, rescale of the output accumulators.
//! 3. `O += P·V` with `wgmma.m64n{D}k16`, P straight from the registers of
//!    S (the accumulator fragment is the A fragment once packed to bf16),
//!    V from shared memory (N-major, swizzled).
//!
//! Each warpgroup overlaps the softmax of tile j with `P_{j-1}·V_{j-1}` on
//! the tensor cores, and the two warpgroups run half a tile apart
//! (ping-pong), so one's softmax overlaps the other's GEMMs. K/V tiles are
//! triple buffered with `cp.async` (each warpgroup copies half of each
//! tile), published to the tensor cores with `fence.proxy.async` and one CTA
//! barrier per tile. Shared memory: the Q tile (reused to stage the output)
//! and three K and three V buffers, plus 1 KiB to align the base to the
//! swizzle period: `(block_m + 6 · 128) · D · 2 + 1024` bytes = 230 400
//! (D = 128) or 115 712 (D = 64), so one CTA per SM.

/// The CUDA-core reference kernel (`kernels/attention_simt.cu`).
const SIMT_TEMPLATE: &str = include_str!("../kernels/attention_simt.cu");

/// Query rows per CTA of the CUDA-core kernel (one warp each).
const SIMT_ROWS: u32 = 8;

/// The CUDA-core attention kernel for any head width up to 256 and a storage
/// type named by its CUDA type and short name (`"float", "f32"`), for where
/// the tensor-core kernel does not apply (f32 models, other head widths).
/// Same ABI as [`render_attention`]'s kernel.
pub fn render_simt_attention(
    head_dim: usize,
    c_type: &str,
    dtype_name: &str,
) -> Result<AttentionKernel, String> {
    if head_dim == 0 || head_dim > 256 {
        return Err(format!(
            "attention with head width {head_dim} (at most 256)"
        ));
    }
    let name = format!("attention_simt_d{head_dim}_{dtype_name}");
    let source = SIMT_TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{T}}", c_type)
        .replace("{{HEAD_DIM}}", &head_dim.to_string());
    Ok(AttentionKernel {
        name,
        source,
        block_m: SIMT_ROWS,
        threads: SIMT_ROWS * 32,
        shared_bytes: 0,
    })
}

/// Query rows per CTA (2 warpgroups × 64 rows; the kernel assumes 128).
const BLOCK_M: u32 = 128;
/// Keys per main-loop iteration (the kernel assumes 128).
const BLOCK_N: u32 = 128;
/// K and V buffers each (the kernel's schedule needs 3).
const STAGES: u32 = 3;
/// Warps per CTA (two warpgroups of four).
const NUM_WARPS: u32 = BLOCK_M / 16;

/// The CUDA template, with `{{…}}` placeholders.
const TEMPLATE: &str = include_str!("../kernels/attention.cu");

/// A rendered flash-attention kernel and its launch parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionKernel {
    /// The `extern "C"` symbol, `attention_d{head_dim}_bf16`.
    pub name: String,
    /// Self-contained CUDA C++ source (needs only `<cuda_bf16.h>`); several
    /// kernels may be concatenated into one translation unit.
    pub source: String,
    /// Query rows per CTA: `grid.x = ceil(seq_q / block_m)`.
    pub block_m: u32,
    /// Threads per CTA (`blockDim.x`).
    pub threads: u32,
    /// Dynamic shared memory per CTA in bytes (the launch's `sharedMemBytes`).
    pub shared_bytes: u32,
}

/// Renders the attention kernel for `head_dim` (64 or 128; anything else is
/// an error).
pub fn render_attention(head_dim: usize) -> Result<AttentionKernel, String> {
    if head_dim != 64 && head_dim != 128 {
        return Err(format!(
            "attention: unsupported head_dim {head_dim} (supported: 64, 128)"
        ));
    }
    let d = head_dim as u32;
    let name = format!("attention_d{head_dim}_bf16");
    // Q tile + 3 K buffers + 3 V buffers (swizzled, unpadded) + 1 KiB of
    // slack to align the base to the 1024-byte swizzle period.
    let shared_bytes = (BLOCK_M + 2 * STAGES * BLOCK_N) * d * 2 + 1024;
    let source = TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{HEAD_DIM}}", &d.to_string())
        .replace("{{BLOCK_M}}", &BLOCK_M.to_string())
        .replace("{{BLOCK_N}}", &BLOCK_N.to_string())
        .replace("{{NUM_WARPS}}", &NUM_WARPS.to_string())
        .replace("{{SHARED_BYTES}}", &shared_bytes.to_string());
    debug_assert!(
        !source.contains("{{"),
        "unreplaced placeholder in attention.cu"
    );
    Ok(AttentionKernel {
        name,
        source,
        block_m: BLOCK_M,
        threads: NUM_WARPS * 32,
        shared_bytes,
    })
}

/// Launch grid for `kernel`: `[ceil(seq_q / block_m), heads, batch]`.
pub fn grid(kernel: &AttentionKernel, batch: u32, heads: u32, seq_q: u32) -> [u32; 3] {
    [seq_q.div_ceil(kernel.block_m), heads, batch]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_supported_head_dims() {
        for d in [64, 128] {
            let k = render_attention(d).unwrap();
            assert_eq!(k.name, format!("attention_d{d}_bf16"));
            assert!(k
                .source
                .contains(&format!("void __launch_bounds__(8 * 32, 1)\n{}(", k.name)));
            assert!(!k.source.contains("{{"));
            assert_eq!(k.threads, 256);
        }
        assert_eq!(render_attention(128).unwrap().shared_bytes, 230_400);
        assert_eq!(render_attention(64).unwrap().shared_bytes, 115_712);
    }

    #[test]
    fn rejects_other_head_dims() {
        for d in [0, 32, 80, 96, 256] {
            assert!(render_attention(d).is_err());
        }
    }

    #[test]
    fn grid_covers_all_rows() {
        let k = render_attention(128).unwrap();
        assert_eq!(grid(&k, 2, 24, 4352), [34, 24, 2]);
        assert_eq!(grid(&k, 1, 3, 19), [1, 3, 1]);
        assert_eq!(grid(&k, 1, 3, 129), [2, 3, 1]);
    }
}
