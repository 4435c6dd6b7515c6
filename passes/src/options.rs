//! Options of the pass pipeline (`[passes]` in model.toml maps onto these;
//! the mapping lives in `fluxc-models`, this crate knows nothing of TOML).

/// How linears are quantized to fp8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Fp8Mode {
    /// No quantization.
    #[default]
    Off,
    /// One dynamic scale per activation tensor, one per weight tensor.
    DynamicTensor,
    /// One dynamic scale per activation row, one per weight output channel.
    DynamicRow,
}

/// Which linears the fp8 pass quantizes, by the scope of the linear node
/// (e.g. `transformer_blocks.3.attn.to_q`). Globs use `*` for any run of
/// characters, dots included. A linear is selected when it matches an
/// `include` glob and no `exclude` glob. Whether attention is quantized
/// too is the `attention` switch (no globs: every attention the fp8 kernel
/// can run, see `fp8_attention`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fp8Policy {
    /// Scopes to quantize.
    pub include: Vec<String>,
    /// Scopes never to quantize.
    pub exclude: Vec<String>,
    /// Linears whose input has fewer rows than this stay unquantized (0:
    /// no limit). FLUX's text stream (256 or 512 rows) and the one-row
    /// adaLN GEMVs gain little from fp8; this keeps them out by shape,
    /// which scope globs cannot do once q/k/v fusion has merged the image
    /// and text streams' scopes into `transformer_blocks.N.attn`.
    pub min_rows: usize,
    /// Linears of these `[rows, in_features, out_features]` stay
    /// unquantized: `fluxc compile --tune` measured their bf16 GEMM faster
    /// than the fp8 one on the target GPU (empty: none).
    pub bf16_shapes: Vec<[usize; 3]>,
    /// Also run attention in fp8 e4m3 (`fp8_attention`): every bf16
    /// attention with 128-wide heads, per-tensor scales. On by default:
    /// on the H200 it took FLUX.1-schnell's fp8 forward from 89.8 to 86.0
    /// ms with the same error against fp32
    /// (`benches/results/2026-11-29_ca9f1d8_forward_schnell_1024_t512_fp8_attention.md`).
    pub attention: bool,
    /// Also quantize the large one-row linears (at least
    /// [`crate::fp8::ONE_ROW_MIN_WEIGHTS`] weights; FLUX's stacked
    /// modulation product, 6.5 GB in bf16), whatever their scope: a one-row
    /// product only streams its weight, so an fp8 weight halves its time,
    /// and fluxc's fp8 GEMV runs it (per-row x scale, per-channel weight
    /// scales, as the mode says).
    pub one_row: bool,
}

impl Default for Fp8Policy {
    /// The large transformer-block linears: every linear inside a double or
    /// single block except the adaLN modulation linears, which run on one
    /// row (a GEMV is bandwidth-bound and fp8 activations would not pay),
    /// and attention with 128-wide heads.
    fn default() -> Self {
        Fp8Policy {
            include: vec![
                "transformer_blocks.*".into(),
                "single_transformer_blocks.*".into(),
            ],
            exclude: vec![
                "*.norm1.linear".into(),
                "*.norm1_context.linear".into(),
                "*.norm.linear".into(),
            ],
            min_rows: 0,
            bf16_shapes: Vec::new(),
            attention: true,
            one_row: true,
        }
    }
}

/// Options of every pass. `Default` is "all on", epilogue fusion on, fp8 off.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PassOptions {
    /// Remove duplicate computations.
    pub cse: bool,
    /// Algebraic and view simplifications (slice of concat, reshape chains, ...).
    pub simplify: bool,
    /// Rewrite 1×1 convolutions as matmuls over the channels-last view.
    pub conv1x1_as_mm: bool,
    /// Fuse linears that share an input (q/k/v, q/k/v/mlp) on an e-graph.
    pub fuse_qkv: bool,
    /// Linears whose input has fewer rows than this are left out of the
    /// e-graph; of those, one-row linears sharing an input (the modulation
    /// linears) are stacked directly (`fuse_qkv/one_row.rs`).
    pub fuse_qkv_min_rows: usize,
    /// Attach pointwise tails (bias, GELU, gate, residual add) to the GEMM
    /// that produces their input.
    pub epilogue_fusion: bool,
    /// fp8 dynamic quantization of selected linears (and, when the policy
    /// says so, of attention).
    pub fp8: Fp8Mode,
    /// Which linears fp8 applies to, and whether attention does.
    pub fp8_policy: Fp8Policy,
    /// Let fp8 GEMMs accumulate with Hopper's fast (less often promoted)
    /// fp8 accumulation, as torchao does by default. Not a graph rewrite:
    /// codegen records it on every fp8 GEMM.
    pub fp8_fast_accumulation: bool,
    /// Run the convolutions `conv_im2col` rewrote through cuDNN: codegen
    /// hands cuDNN the image the im2col reads (no patch matrix in memory).
    /// Not a graph rewrite; off by default (the runtime then needs cuDNN 9).
    pub cudnn_convolutions: bool,
    /// Let a GEMM whose whole tail is a residual add `r + y` (or, for fp8
    /// GEMMs with per-row scales, a gated one `r + g ⊙ y`) compute the sum
    /// itself, r as cuBLASLt's C (codegen's `gated.rs`). Not a graph
    /// rewrite; on by default, off to measure it.
    pub residual_in_gemm: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            cse: true,
            simplify: true,
            conv1x1_as_mm: true,
            fuse_qkv: true,
            fuse_qkv_min_rows: 16,
            epilogue_fusion: true,
            fp8: Fp8Mode::Off,
            fp8_policy: Fp8Policy::default(),
            fp8_fast_accumulation: false,
            cudnn_convolutions: false,
            residual_in_gemm: true,
        }
    }
}
