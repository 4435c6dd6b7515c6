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
//!   in shared memory and masked to `-inf` before the softmax.
//!
//! # Tiling
//!
//! One CTA handles `block_m` = 128 query rows of one `(b, h)` with 8 warps,
//! 16 rows per warp, so each warp runs its own independent online softmax.
//! The main loop walks the keys in tiles of 64:
//!
//! 1. `S = Q·Kᵀ` with `mma.sync.m16n8k16` (bf16 in, f32 out); Q lives in
//!    registers as A fragments for the whole kernel, K comes from shared
//!    memory through `ldmatrix`.
//! 2. `S · scale · log2(e)`, masking, running max / sum update, rescale of
//!    the output accumulators, `P = exp2(S - max)`.
//! 3. `O += P·V`: the f32 C fragments of `S` are exactly the A fragment
//!    layout of the next MMA, so `P` is rounded to bf16 in registers and
//!    reused; V comes through `ldmatrix.trans`.
//!
//! K/V tiles are double buffered with `cp.async` (the next tile loads while
//! the current one is consumed). Shared memory holds the Q tile (reused as
//! the output staging tile) and two K and two V buffers, every row padded by
//! 16 bytes so `ldmatrix` is bank-conflict free:
//! `(block_m + 4 · 64) · (D + 8) · 2` bytes = 104 448 (D = 128) or 55 296
//! (D = 64).

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

/// Query rows per CTA (8 warps × 16 rows).
const BLOCK_M: u32 = 128;
/// Keys per main-loop iteration.
const BLOCK_N: u32 = 64;
/// Warps per CTA; each owns 16 query rows.
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
    // Q tile + 2 K buffers + 2 V buffers, rows padded by 8 bf16.
    let shared_bytes = (BLOCK_M + 4 * BLOCK_N) * (d + 8) * 2;
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
                .contains(&format!("void __launch_bounds__(8 * 32)\n{}(", k.name)));
            assert!(!k.source.contains("{{"));
            assert_eq!(k.threads, 256);
        }
        assert_eq!(render_attention(128).unwrap().shared_bytes, 104_448);
        assert_eq!(render_attention(64).unwrap().shared_bytes, 55_296);
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
