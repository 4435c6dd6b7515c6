//! The one-row linear kernels: `y = x · wᵀ (+ b)` for bf16 operands with a
//! single input row: FLUX's modulation linears, which read 6.5 GB of
//! weights per forward (stacked into one product by
//! `fluxc_passes::fuse_qkv::stack_one_row_linears`). A memory-bound product
//! needs a kernel that streams the weight at full bandwidth, which
//! cuBLASLt's tiled GEMMs do not do with one row; `kernels/gemv.cu` does
//! (see its header). Lowering picks it for every bf16 linear with one input
//! row and a row length that is a multiple of 8 (16-byte loads).
//!
//! `kernels/gemv_fp8.cu` is the same for a `scaled_linear` with one input
//! row (e4m3 x and weight, f32 scales, bf16 out): the fp8 policy's
//! `one_row` switch quantizes FLUX's stacked modulation product, which then
//! streams half the bytes. Rows are a multiple of 16 there (16 e4m3 per
//! load).

use crate::lower::FixedLaunch;

const TEMPLATE: &str = include_str!("../kernels/gemv.cu");
const FP8_TEMPLATE: &str = include_str!("../kernels/gemv_fp8.cu");

/// Threads per CTA (8 warps).
const THREADS: u32 = 256;
/// Output rows per warp (the template's `ROWS`).
const ROWS_PER_WARP: u32 = 1;

/// Whether the kernel handles rows of `k` elements.
pub fn supports(k: u64) -> bool {
    k > 0 && k % 8 == 0 && k <= 1 << 20
}

/// The launch of `y[n] = x[k] · w[n, k]ᵀ (+ b[n])`.
pub fn render(k: u64, n: u64, has_bias: bool) -> Result<FixedLaunch, String> {
    if !supports(k) {
        return Err(format!(
            "one-row linear with {k} input features (a multiple of 8)"
        ));
    }
    let name = format!("gemv_bf16_k{k}{}", if has_bias { "_bias" } else { "" });
    let source = TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{K}}", &k.to_string())
        .replace("{{HAS_BIAS}}", flag(has_bias));
    launch(name, source, n)
}

/// The launch of `name` (`source`) over `n` output rows, `ROWS_PER_WARP`
/// per warp (both kernels: one).
fn launch(name: String, source: String, n: u64) -> Result<FixedLaunch, String> {
    let rows_per_cta = u64::from(THREADS / 32 * ROWS_PER_WARP);
    let ctas = u32::try_from(n.div_ceil(rows_per_cta))
        .map_err(|_| format!("one-row linear with {n} outputs"))?;
    Ok(FixedLaunch {
        name,
        source,
        grid: [ctas.max(1), 1, 1],
        threads: THREADS,
        shared_bytes: 0,
    })
}

/// A template's `#if` switch.
fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// Whether the fp8 kernel handles rows of `k` elements.
pub fn supports_fp8(k: u64) -> bool {
    k > 0 && k % 16 == 0 && k <= 1 << 20
}

/// The launch of `y[n] = (x8[k] · w8[n, k]ᵀ) · x_scale · w_scale (+ b[n])`,
/// `w_scale` one per output row or (`w_scale_per_row` false) one in all.
pub fn render_fp8(
    k: u64,
    n: u64,
    has_bias: bool,
    w_scale_per_row: bool,
) -> Result<FixedLaunch, String> {
    if !supports_fp8(k) {
        return Err(format!(
            "one-row fp8 linear with {k} input features (a multiple of 16)"
        ));
    }
    let name = format!(
        "gemv_fp8_k{k}{}{}",
        if w_scale_per_row { "_rowscale" } else { "" },
        if has_bias { "_bias" } else { "" }
    );
    let source = FP8_TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{K}}", &k.to_string())
        .replace("{{HAS_BIAS}}", flag(has_bias))
        .replace("{{W_SCALE_PER_ROW}}", flag(w_scale_per_row));
    launch(name, source, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let g = render(3072, 18432, true).unwrap();
        assert_eq!(g.name, "gemv_bf16_k3072_bias");
        assert!(!g.source.contains("{{"));
        assert!(g.source.contains("constexpr int K = 3072;"));
        assert!(g.source.contains("#if 1"));
        // 8 rows per CTA.
        assert_eq!(g.grid, [2304, 1, 1]);
        assert_eq!(render(64, 17, false).unwrap().grid, [3, 1, 1]);
        assert!(render(64, 17, false).unwrap().source.contains("#if 0"));
    }

    #[test]
    fn rejects_rows_not_in_16_byte_chunks() {
        assert!(!supports(12));
        assert!(render(100, 4, true).is_err());
        assert!(!supports_fp8(24));
        assert!(render_fp8(24, 4, true, true).is_err());
    }

    #[test]
    fn renders_the_fp8_kernel_with_every_placeholder() {
        let g = render_fp8(3072, 1_056_768, true, true).unwrap();
        assert_eq!(g.name, "gemv_fp8_k3072_rowscale_bias");
        assert!(!g.source.contains("{{"));
        assert!(g.source.contains("constexpr int K = 3072;"));
        assert!(g
            .source
            .contains("#if 1\n        const float ws = w_scale[row];"));
        // One row per warp, 8 per CTA.
        assert_eq!(g.grid, [132_096, 1, 1]);
        let t = render_fp8(16, 3, false, false).unwrap();
        assert_eq!(t.name, "gemv_fp8_k16");
        assert_eq!(t.grid, [1, 1, 1]);
        assert!(t
            .source
            .contains("#if 0\n        const float ws = w_scale[row];"));
    }
}
