//! fp8 flash attention: q, k and v in e4m3 with per-tensor scales, P in
//! e4m3 for the `P·V` product, f32 accumulation, bf16 output.
//!
//! Why: on Hopper the fp8 tensor cores run twice the bf16 FLOPs, and
//! attention is 14.9 TFLOP of every FLUX forward at 1024². The kernel
//! (`kernels/attention_fp8.cu`) is the bf16 kernel's structure (TMA producer
//! warp, mbarrier rings, two consumer warpgroups in ping-pong) with k32 fp8
//! wgmmas; its header documents the layouts and the fragment mapping. It
//! accumulates `q8·k8ᵀ` in f16 and runs the softmax on f16 pairs (half of
//! its exponentials on the FMA pipe, `EXP2_POLY_SHARE`), so q8
//! and k8 must keep every dot product within f16's range: the fp8
//! attention pass quantizes them into ±16 (`Op::ScaledAttention` states the
//! contract).
//!
//! 8-bit wgmma operands must be K-major in shared memory, so for `P·V` the
//! values must be stored keys-innermost: [`render_v_layout`]'s kernel
//! (`kernels/attention_fp8_v.cu`) reads bf16 v `[B, Sk, H, D]` (from up to
//! two row-strided sources, so v can stay where the fused q/k/v projections
//! wrote it: `v_rows.rs`), quantizes
//! it by v's scale (the IR's `quantize`) and writes `vt [B, H, D, Sp]` in
//! e4m3 (`Sp` = [`padded_keys`]), with the keys of each 16-key group in the
//! order the attention kernel's P registers hold them, so the kernel needs
//! no shuffles.
//!
//! # ABI
//!
//! ```text
//! attention_fp8_d128(const __grid_constant__ FaTensorMap tq, tk, tvt,
//!     __nv_bfloat16* o, const float* q_scale, const float* k_scale,
//!     const float* v_scale, int seq_q, int seq_kv, int heads, float scale)
//! attention_fp8_v_d128(const float* v_scale, unsigned char* vt,
//!     int seq_kv, int heads,
//!     const __nv_bfloat16* v0, int rows0, int row_stride0, int batch_stride0,
//!     const __nv_bfloat16* v1, int row_stride1, int batch_stride1)
//! ```
//!
//! * tq, tk: q8 / k8 (contiguous u8 `[B, S, H, 128]`) as 4-D tensor maps,
//!   dims innermost first `[128, H, S, B]`, byte strides `[128, 128·H,
//!   128·H·S]`, box `[128, 1, block_m | block_n, 1]`, 128-byte swizzle,
//!   out-of-bounds zero.
//! * tvt: vt as dims `[Sp, 128, H, B]`, byte strides `[Sp, 128·Sp,
//!   128·Sp·H]`, box `[vt_box_keys, 128, 1, 1]`, 128-byte swizzle.
//! * Scales: one f32 each, `x ≈ x8 · x_scale`.
//! * Grids: [`attention_fp8_grid`] with `threads` and `shared_bytes` of
//!   [`Fp8AttentionKernel`]; [`v_layout_grid`] with 256 threads.
//! * `attention_fp8_d128_part` and `_merge` ([`Fp8AttentionKernel::split`],
//!   the artifact's `AttentionSplit` documents their ABI) run chosen query
//!   tiles split over their keys, as the bf16 kernel's do.

use fluxc_artifact::AttentionSplit;

/// Query rows per CTA (two consumer warpgroups of 64).
const BLOCK_M: u32 = 128;

/// Keys per main-loop tile. With the scores in f16 pairs (32 registers per
/// 128 keys) a 256-key tile fits, and halves the per-tile work of the
/// softmax (row maxima, their shuffles, the O rescale): 791 → 946 TFLOP/s
/// at FLUX's [1, 24, 4608, 128] on the H200, 836 with 128-key tiles.
const BLOCK_N: u32 = 256;

/// Keys per box of vt's tensor map: one 128-byte swizzle row of e4m3 (the
/// 128-byte swizzle allows no wider box), so a key tile is two boxes.
const VT_BOX_KEYS: u32 = 128;

/// Threads per CTA: one producer and two consumer warpgroups.
const THREADS: u32 = 384;

/// K and V buffers each.
const STAGES: u32 = 2;

/// Of every `EXP2_POLY_SHARE.1` f16 pairs of P, the last
/// `EXP2_POLY_SHARE.0` are exponentiated on the FMA pipe by a polynomial
/// instead of the quarter-rate exponential unit, which bounds the kernel.
/// Chosen by measurement on the H200 (`benches/attention/exp2_share.sh`;
/// results in `benches/results/2026-11-29_attention_exp2_share*.log`).
const EXP2_POLY_SHARE: (u32, u32) = (1, 2);

/// The only head width the fp8 kernel takes: one 128-byte swizzle row of
/// e4m3 per key.
pub const FP8_HEAD_DIM: usize = 128;

/// Keys per CTA of the V layout kernel.
const V_LAYOUT_KEYS: u32 = 128;

const TEMPLATE: &str = include_str!("../kernels/attention_fp8.cu");
const V_TEMPLATE: &str = include_str!("../kernels/attention_fp8_v.cu");

/// A rendered fp8 attention kernel and its launch parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fp8AttentionKernel {
    /// The `extern "C"` symbol, `attention_fp8_d128`.
    pub name: String,
    /// Self-contained CUDA C++ source (needs only `<cuda_bf16.h>`).
    pub source: String,
    /// Query rows per CTA: `grid.x = ceil(seq_q / block_m)`.
    pub block_m: u32,
    /// Keys per tile: the k box's rows.
    pub block_n: u32,
    /// The key extent of vt's box (`VT_BOX_KEYS`; a tile is
    /// `block_n / vt_box_keys` boxes).
    pub vt_box_keys: u32,
    /// Threads per CTA.
    pub threads: u32,
    /// Dynamic shared memory per CTA in bytes (above 48 KiB: the runtime
    /// raises the attribute first).
    pub shared_bytes: u32,
    /// The entry points that split query tiles over their keys
    /// (`{name}_part`, `{name}_merge`).
    pub split: AttentionSplit,
}

/// The V layout kernel (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VLayoutKernel {
    /// The `extern "C"` symbol, `attention_fp8_v_d128`.
    pub name: String,
    /// Self-contained CUDA C++ source.
    pub source: String,
    /// Threads per CTA.
    pub threads: u32,
    /// Keys per CTA (see [`v_layout_grid`]).
    pub keys_per_cta: u32,
}

/// Shared memory of the attention kernel: the Q tile, the K and Vt rings,
/// the bf16 output tile, the tile of e4m3 ones (8 rows of 128 bytes: P's
/// row sums come from wgmmas against it), the mbarriers (8 bytes each: Q
/// full, K/V full/empty per stage) and 1 KiB to align the base to the
/// swizzle period.
fn shared_bytes(stages: u32) -> u32 {
    let d = FP8_HEAD_DIM as u32;
    BLOCK_M * d + 2 * stages * BLOCK_N * d + BLOCK_M * d * 2 + 8 * 128 + 8 * (1 + 4 * stages) + 1024
}

fn check_head_dim(head_dim: usize) -> Result<(), String> {
    if head_dim != FP8_HEAD_DIM {
        return Err(format!(
            "fp8 attention: unsupported head_dim {head_dim} (supported: {FP8_HEAD_DIM})"
        ));
    }
    Ok(())
}

/// Renders the fp8 attention kernel for `head_dim` (128 only).
pub fn render_attention_fp8(head_dim: usize) -> Result<Fp8AttentionKernel, String> {
    check_head_dim(head_dim)?;
    let name = format!("attention_fp8_d{head_dim}");
    let shared_bytes = shared_bytes(STAGES);
    let source = TEMPLATE
        .replace("{{COMMON}}", crate::attention::COMMON)
        .replace("{{NAME}}", &name)
        .replace("{{STAGES}}", &STAGES.to_string())
        .replace("{{BLOCK_N}}", &BLOCK_N.to_string())
        .replace("{{EXP2_POLY_PAIRS}}", &EXP2_POLY_SHARE.0.to_string())
        .replace("{{EXP2_POLY_GROUP}}", &EXP2_POLY_SHARE.1.to_string())
        .replace("{{SHARED_BYTES}}", &shared_bytes.to_string());
    debug_assert!(
        !source.contains("{{"),
        "unreplaced placeholder in attention_fp8.cu"
    );
    Ok(Fp8AttentionKernel {
        split: crate::attention::split_entry_points(&name, FP8_HEAD_DIM as u32),
        name,
        source,
        block_m: BLOCK_M,
        block_n: BLOCK_N,
        vt_box_keys: VT_BOX_KEYS,
        threads: THREADS,
        shared_bytes,
    })
}

/// Launch grid of `kernel`: `[ceil(seq_q / block_m), heads, batch]`.
pub fn attention_fp8_grid(
    kernel: &Fp8AttentionKernel,
    batch: u32,
    heads: u32,
    seq_q: u32,
) -> [u32; 3] {
    [seq_q.div_ceil(kernel.block_m), heads, batch]
}

/// Renders the V layout kernel for `head_dim` (128 only).
pub fn render_v_layout(head_dim: usize) -> Result<VLayoutKernel, String> {
    check_head_dim(head_dim)?;
    let name = format!("attention_fp8_v_d{head_dim}");
    let source = V_TEMPLATE.replace("{{NAME}}", &name);
    debug_assert!(
        !source.contains("{{"),
        "unreplaced placeholder in attention_fp8_v.cu"
    );
    Ok(VLayoutKernel {
        name,
        source,
        threads: 256,
        keys_per_cta: V_LAYOUT_KEYS,
    })
}

/// `seq_kv` rounded up to a multiple of 16: the key extent of vt (whole
/// 16-key groups, and 16-byte rows as the tensor map needs); 16 for an
/// empty key sequence, which the driver would refuse as a zero extent.
pub fn padded_keys(seq_kv: u32) -> u32 {
    seq_kv.max(1).div_ceil(16) * 16
}

/// Launch grid of the V layout kernel: `[ceil(Sp / 128), heads, batch]`.
pub fn v_layout_grid(batch: u32, heads: u32, seq_kv: u32) -> [u32; 3] {
    [padded_keys(seq_kv).div_ceil(V_LAYOUT_KEYS), heads, batch]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_head_dim_128_only() {
        let k = render_attention_fp8(128).unwrap();
        assert_eq!(k.name, "attention_fp8_d128");
        assert!(k
            .source
            .contains("void __launch_bounds__(384, 1)\nattention_fp8_d128("));
        assert!(!k.source.contains("{{"));
        assert!(k.source.contains("#define FLUXC_FA_WS_HELPERS"));
        assert_eq!(
            (k.block_m, k.block_n, k.vt_box_keys, k.threads),
            (128, 256, 128, 384)
        );
        // Q 16 KiB + 2 × (K + Vt 32 KiB) + O 32 KiB + ones 1 KiB + 9 barriers + 1 KiB.
        assert_eq!(k.shared_bytes, 182_344);
        let v = render_v_layout(128).unwrap();
        assert_eq!(v.name, "attention_fp8_v_d128");
        assert!(v.source.contains("\nattention_fp8_v_d128("));
        for d in [0, 64, 96, 256] {
            assert!(render_attention_fp8(d).is_err());
            assert!(render_v_layout(d).is_err());
        }
    }

    #[test]
    fn grids_cover_every_row_and_key() {
        let k = render_attention_fp8(128).unwrap();
        assert_eq!(attention_fp8_grid(&k, 1, 24, 4608), [36, 24, 1]);
        assert_eq!(attention_fp8_grid(&k, 2, 3, 129), [2, 3, 2]);
        assert_eq!(padded_keys(0), 16);
        assert_eq!(padded_keys(16), 16);
        assert_eq!(padded_keys(4080 + 512), 4592);
        assert_eq!(padded_keys(333), 336);
        assert_eq!(v_layout_grid(1, 24, 4608), [36, 24, 1]);
        assert_eq!(v_layout_grid(1, 2, 333), [3, 2, 1]);
    }

    /// The key order of the V layout kernel is a permutation of each
    /// 16-key group that puts S column c(L) at P position L (the kernel
    /// header derives it from the two fragment layouts).
    #[test]
    fn key_order_is_a_permutation_matching_the_fragments() {
        let order: Vec<u32> = (0..16u32)
            .map(|l| 8 * ((l & 3) >> 1) + 2 * (l >> 2) + (l & 1))
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        // Thread t of a quad packs S columns 2t, 2t+1, 8+2t, 9+2t of its row
        // into the register the wgmma reads as keys 4t..4t+3.
        for t in 0..4u32 {
            assert_eq!(
                &order[4 * t as usize..4 * t as usize + 4],
                &[2 * t, 2 * t + 1, 8 + 2 * t, 9 + 2 * t]
            );
        }
        let v = render_v_layout(128).unwrap();
        assert!(v
            .source
            .contains("8 * ((l & 3) >> 1) + 2 * (l >> 2) + (l & 1)"));
    }
}
