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
//! * Two more entry points, `attention_d{D}_bf16_part` and `_merge`
//!   ([`AttentionKernel::split`], whose artifact type documents their
//!   ABI), run chosen query tiles split over their keys and merge the
//!   segments: the runtime uses them for the last, partial wave of tiles
//!   (at FLUX's 4352 tokens, 816 CTAs are 6.2 waves on 132 SMs). The
//!   kernel body is one device function, `_cta<PART>`, under all three.
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

use fluxc_artifact::{AttentionOperands, AttentionSplit};
use fluxc_autotune::{Config, ConfigSpace, Field};

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
        split: None,
    })
}

/// Query rows per CTA (2 consumer warpgroups × 64 rows; fixed by the kernel).
const BLOCK_M: u32 = 128;
/// Threads per CTA: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory one CTA may use on sm_90 (227 KiB).
pub const MAX_SHARED_BYTES: u32 = 232_448;

/// The tile configuration of the tensor-core kernel: what the autotuner
/// may change without changing what the kernel computes (beyond the order
/// of its f32 sums).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionConfig {
    /// Keys per main-loop iteration: 128 or 192.
    pub block_n: u32,
    /// K and V buffers each: 2 or 3.
    pub stages: u32,
}

impl Default for AttentionConfig {
    /// 192-key tiles, 2 stages: the fastest at FLUX's lengths on the H200
    /// (626 TFLOP/s at 4608 tokens against 581 for 128 keys and 3 stages).
    fn default() -> Self {
        AttentionConfig {
            block_n: 192,
            stages: 2,
        }
    }
}

impl AttentionConfig {
    /// Shared memory of the kernel at head width `d`: the Q tile, the K and
    /// V rings (swizzled, unpadded), the mbarriers (Q full, K/V full/empty
    /// per stage, 8 bytes each) and 1 KiB of slack to align the base to the
    /// 1024-byte swizzle period.
    pub fn shared_bytes(self, d: u32) -> u32 {
        (BLOCK_M + 2 * self.stages * self.block_n) * d * 2 + 8 * (1 + 4 * self.stages) + 1024
    }
}

/// The autotuner's space of [`AttentionConfig`]s: `block_n` ∈ {128, 192},
/// `stages` ∈ {2, 3} (192 keys with 3 stages is rejected when rendered: it
/// needs more shared memory than a CTA has).
pub fn space() -> ConfigSpace {
    ConfigSpace::new(vec![
        Field::new("block_n", [128, 192]),
        Field::new("stages", [2, 3]),
    ])
}

/// `config` of [`space`] as an [`AttentionConfig`].
pub fn config_from(space: &ConfigSpace, config: &Config) -> AttentionConfig {
    let values = space.values(config);
    AttentionConfig {
        block_n: values[0] as u32,
        stages: values[1] as u32,
    }
}

/// The point of [`space`] that `config` is, if the space has it.
pub fn config_of(space: &ConfigSpace, config: AttentionConfig) -> Option<Config> {
    space.config_of(&[i64::from(config.block_n), i64::from(config.stages)])
}

/// The CUDA template, with `{{…}}` placeholders.
const TEMPLATE: &str = include_str!("../kernels/attention.cu");

/// The device helpers the warp-specialized kernels share, rendered in place
/// of their `{{COMMON}}` placeholder.
pub(crate) const COMMON: &str = include_str!("../kernels/attention_common.cuh");

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
    /// The entry points that split query tiles over their keys, where the
    /// kernel has them (the tensor-core kernel's `{name}_part` and
    /// `{name}_merge`).
    pub split: Option<AttentionSplit>,
}

/// Renders the attention kernel for `head_dim` (64 or 128; anything else is
/// an error) in its default configuration.
pub fn render_attention(head_dim: usize) -> Result<AttentionKernel, String> {
    render_attention_with(head_dim, AttentionConfig::default())
}

/// [`render_attention`] in configuration `config`; a configuration the
/// kernel does not take, or whose shared memory exceeds a CTA's, is an
/// error. The default configuration's kernel is `attention_d{D}_bf16`,
/// another's `attention_d{D}_n{block_n}_s{stages}_bf16`.
pub fn render_attention_with(
    head_dim: usize,
    config: AttentionConfig,
) -> Result<AttentionKernel, String> {
    if head_dim != 64 && head_dim != 128 {
        return Err(format!(
            "attention: unsupported head_dim {head_dim} (supported: 64, 128)"
        ));
    }
    if !matches!(config.block_n, 128 | 192) || !matches!(config.stages, 2 | 3) {
        return Err(format!(
            "attention: {config:?} is not a configuration of the kernel (block_n 128 or 192, \
             stages 2 or 3)"
        ));
    }
    let d = head_dim as u32;
    let shared_bytes = config.shared_bytes(d);
    if shared_bytes > MAX_SHARED_BYTES {
        return Err(format!(
            "attention: {config:?} needs {shared_bytes} bytes of shared memory at head width \
             {d} (at most {MAX_SHARED_BYTES})"
        ));
    }
    let name = if config == AttentionConfig::default() {
        format!("attention_d{head_dim}_bf16")
    } else {
        format!(
            "attention_d{head_dim}_n{}_s{}_bf16",
            config.block_n, config.stages
        )
    };
    let source = TEMPLATE
        .replace("{{COMMON}}", COMMON)
        .replace("{{NAME}}", &name)
        .replace("{{HEAD_DIM}}", &d.to_string())
        .replace("{{BLOCK_N}}", &config.block_n.to_string())
        .replace("{{STAGES}}", &config.stages.to_string())
        .replace("{{SHARED_BYTES}}", &shared_bytes.to_string());
    debug_assert!(
        !source.contains("{{"),
        "unreplaced placeholder in attention.cu"
    );
    Ok(AttentionKernel {
        operands: AttentionOperands::TensorMaps {
            q_rows: BLOCK_M,
            kv_rows: config.block_n,
        },
        split: Some(split_entry_points(&name, d)),
        name,
        source,
        block_m: BLOCK_M,
        threads: THREADS,
        shared_bytes,
    })
}

/// The split entry points of tensor-core kernel `name` (bf16 or fp8, both
/// with 128-row query tiles) at head width `head_dim`: `{name}_part` and
/// `{name}_merge` (`attention_common.cuh`'s `ws_split_*`).
pub(crate) fn split_entry_points(name: &str, head_dim: u32) -> AttentionSplit {
    AttentionSplit {
        part_kernel: format!("{name}_part"),
        merge_kernel: format!("{name}_merge"),
        // The tile's unnormalized O, then its row maxima and row sums.
        part_floats: BLOCK_M * (head_dim + 2),
    }
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
    fn configurations_render_under_their_own_names() {
        let space = space();
        let mut valid = Vec::new();
        for block_n in [128, 192] {
            for stages in [2, 3] {
                let config = AttentionConfig { block_n, stages };
                let c = config_of(&space, config).unwrap();
                assert_eq!(config_from(&space, &c), config);
                if let Ok(k) = render_attention_with(128, config) {
                    assert!(k.shared_bytes <= MAX_SHARED_BYTES);
                    assert_eq!(
                        k.operands,
                        AttentionOperands::TensorMaps {
                            q_rows: 128,
                            kv_rows: block_n
                        }
                    );
                    assert!(k
                        .source
                        .contains(&format!("constexpr int BLOCK_N = {block_n};")));
                    assert!(k
                        .source
                        .contains(&format!("constexpr int STAGES = {stages};")));
                    valid.push(k.name);
                }
            }
        }
        // 192 keys × 3 stages does not fit: 297 KiB of shared memory.
        assert_eq!(
            valid,
            [
                "attention_d128_n128_s2_bf16",
                "attention_d128_n128_s3_bf16",
                "attention_d128_bf16"
            ]
        );
        let e = render_attention_with(
            128,
            AttentionConfig {
                block_n: 192,
                stages: 3,
            },
        )
        .unwrap_err();
        assert!(e.contains("shared memory"), "{e}");
        assert!(render_attention_with(
            64,
            AttentionConfig {
                block_n: 192,
                stages: 3
            }
        )
        .is_ok());
        assert!(render_attention_with(
            128,
            AttentionConfig {
                block_n: 96,
                stages: 2
            }
        )
        .is_err());
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
