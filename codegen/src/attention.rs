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
//!     const __grid_constant__ FaTensorMap tq, tk, tv, __nv_bfloat16* o,
//!     int seq_q, int seq_kv, int heads, float scale)
//! ```
//!
//! * `q`, `o`: contiguous `[batch, seq_q, heads, D]`; `k`, `v`: contiguous
//!   `[batch, seq_kv, heads, D]`. q, k and v reach the kernel as CUDA tensor
//!   maps ([`AttentionOperands::TensorMaps`]: the runtime encodes them), each
//!   the 4-D view `[D, heads, seq, batch]` (innermost first) with boxes of
//!   `[64, 1, 128, 1]` (q) and `[64, 1, 192, 1]` (k, v) and the 128-byte
//!   swizzle; `o` is a pointer. All four must be 16-byte aligned.
//! * grid = [`grid`] = `(ceil(seq_q / 128), heads, batch)`, block = 384
//!   threads, dynamic shared memory = `shared_bytes` (above 48 KiB, so the
//!   runtime must raise `cudaFuncAttributeMaxDynamicSharedMemorySize` first).
//!   Launch nothing when `seq_q == 0` (the grid would be empty); `seq_kv ==
//!   0` writes zeros.
//! * Sequence lengths need not be multiples of the tiles: the tensor maps
//!   zero-fill rows past the end, the kernel writes no query row past
//!   `seq_q` and gives keys past `seq_kv` probability 0.
//!
//! # Design
//!
//! Hopper-only (sm_90a), FlashAttention-3's structure: warpgroup 0 is a
//! producer whose one thread issues TMA copies of the Q tile and of every
//! K and V tile (192 keys) into 2-deep rings guarded by mbarriers;
//! warpgroups 1 and 2
//! each own 64 of the CTA's 128 query rows and compute `S = Q·Kᵀ` and
//! `O += P·V` with `wgmma` (P straight from registers), overlapping the
//! softmax of tile j with `P_{j-1}·V_{j-1}` and, through two named barriers,
//! with the other warpgroup's GEMMs (ping-pong). The kernel template
//! (`kernels/attention.cu`) documents the shared-memory layout and the
//! fragment mapping. Shared memory: Q, 2 K and 2 V tiles, the mbarriers and
//! 1 KiB to align the base: 230 472 bytes (D = 128) or 115 784 (D = 64), so
//! one CTA per SM. Measured on the H200 (D = 128): 626 TFLOP/s at FLUX's
//! 4608 tokens, where 192-key tiles beat 128-key ones (581).

use fluxc_artifact::AttentionOperands;

/// The widest head the CUDA-core kernel takes (one query row per warp keeps
/// its accumulators in registers).
pub const SIMT_MAX_HEAD_DIM: usize = 256;

/// The CUDA-core reference kernel (`kernels/attention_simt.cu`).
const SIMT_TEMPLATE: &str = include_str!("../kernels/attention_simt.cu");

/// Query rows per CTA of the CUDA-core kernel (one warp each).
const SIMT_ROWS: u32 = 8;

/// The CUDA-core attention kernel for any head width up to 256 and a storage
/// type named by its CUDA type and short name (`"float", "f32"`), for where
/// the tensor-core kernel does not apply (f32 models, other head widths).
/// Takes q, k and v as pointers ([`AttentionOperands::Pointers`]), otherwise
/// the same ABI as [`render_attention`]'s kernel.
pub fn render_simt_attention(
    head_dim: usize,
    c_type: &str,
    dtype_name: &str,
) -> Result<AttentionKernel, String> {
    if head_dim == 0 || head_dim > SIMT_MAX_HEAD_DIM {
        return Err(format!(
            "attention with head width {head_dim} (at most {SIMT_MAX_HEAD_DIM})"
        ));
    }
    let name = format!("attention_simt_d{head_dim}_{dtype_name}");
    let source = SIMT_TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{T}}", c_type)
        .replace("{{HEAD_DIM}}", &head_dim.to_string());
    Ok(AttentionKernel {
        operands: AttentionOperands::Pointers,
        name,
        source,
        block_m: SIMT_ROWS,
        threads: SIMT_ROWS * 32,
        shared_bytes: 0,
    })
}

/// Query rows per CTA (2 consumer warpgroups × 64 rows; fixed by the kernel).
const BLOCK_M: u32 = 128;
/// Keys per main-loop iteration (the kernel takes 128 or 192; 192 measured
/// faster at FLUX's lengths).
const BLOCK_N: u32 = 192;
/// K and V buffers each (the kernel takes 2 or 3; only 2 tiles of 192 keys
/// fit next to Q).
const STAGES: u32 = 2;
/// Threads per CTA: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// The mbarriers: Q full, and K/V full/empty per stage, 8 bytes each.
const BARRIER_BYTES: u32 = 8 * (1 + 4 * STAGES);

/// The CUDA template, with `{{…}}` placeholders.
const TEMPLATE: &str = include_str!("../kernels/attention.cu");

/// A rendered flash-attention kernel and its launch parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionKernel {
    /// How q, k and v are passed (tensor maps for the tensor-core kernel).
    pub operands: AttentionOperands,
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
    // Q tile + STAGES K and V buffers (swizzled, unpadded) + the mbarriers
    // + 1 KiB of slack to align the base to the 1024-byte swizzle period.
    let shared_bytes = (BLOCK_M + 2 * STAGES * BLOCK_N) * d * 2 + BARRIER_BYTES + 1024;
    let source = TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{HEAD_DIM}}", &d.to_string())
        .replace("{{BLOCK_N}}", &BLOCK_N.to_string())
        .replace("{{STAGES}}", &STAGES.to_string())
        .replace("{{SHARED_BYTES}}", &shared_bytes.to_string());
    debug_assert!(
        !source.contains("{{"),
        "unreplaced placeholder in attention.cu"
    );
    Ok(AttentionKernel {
        operands: AttentionOperands::TensorMaps {
            q_rows: BLOCK_M,
            kv_rows: BLOCK_N,
        },
        name,
        source,
        block_m: BLOCK_M,
        threads: THREADS,
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
                .contains(&format!("void __launch_bounds__(384, 1)\n{}(", k.name)));
            assert!(!k.source.contains("{{"));
            assert_eq!(k.threads, 384);
            assert_eq!(
                k.operands,
                AttentionOperands::TensorMaps {
                    q_rows: 128,
                    kv_rows: 192
                }
            );
        }
        // Within the H200's 227 KiB per block.
        assert_eq!(render_attention(128).unwrap().shared_bytes, 230_472);
        assert_eq!(render_attention(64).unwrap().shared_bytes, 115_784);
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
