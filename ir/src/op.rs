//! The op set of the IR.
//!
//! One enum covers everything the FLUX.1 transformer and the FLUX VAE decoder
//! compute. Ops are deliberately coarse where a GPU kernel would be
//! (`LayerNorm`, `Attention`, `ApplyRope`) so later passes see the structure,
//! and fine where fusion should decide (`Unary`, `Binary`). Category helpers
//! (`is_elementwise`, `is_reduction`, ...) let passes ask what an op is without
//! matching every variant. Typing rules live in `infer.rs`, semantics in
//! `interp/`.
//!
//! Layout conventions (all row-major):
//! - `Linear`: x `[.., K]`, weight `[N, K]` (PyTorch's `nn.Linear` layout), bias `[N]`.
//! - `Attention`: q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]` (sequence before heads,
//!   as diffusers' processors hold them), output `[B, Sq, H, D]`.
//!   `ScaledAttention` takes the same shapes in fp8 e4m3, each with an f32
//!   `[1]` dequantization scale, and writes bf16.
//! - Image ops (`Conv2d`, `GroupNorm`, `UpsampleNearest`, `Im2col`) are
//!   channels-last: `[N, H, W, C]`. Conv weights keep PyTorch's
//!   `[Cout, Cin/groups, KH, KW]`.

use std::fmt;
use std::hash::{Hash, Hasher};

use crate::{DType, Shape};

/// An f32 attribute that compares and hashes by its bit pattern, so ops stay
/// `Eq + Hash` (needed for e-graphs and common-subexpression elimination).
#[derive(Clone, Copy, Debug)]
pub struct Scalar(pub f32);

impl Scalar {
    /// The value.
    pub fn get(self) -> f32 {
        self.0
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Scalar {}

impl Hash for Scalar {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` prints the shortest text that parses back to the same f32.
        write!(f, "{:?}", self.0)
    }
}

impl From<f32> for Scalar {
    fn from(v: f32) -> Self {
        Scalar(v)
    }
}

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// `√x`
    Sqrt,
    /// `1/√x`
    Rsqrt,
    /// `1/x`
    Recip,
    /// `x²`
    Square,
    /// `sin x`
    Sin,
    /// `cos x`
    Cos,
    /// `tanh x`
    Tanh,
    /// `1/(1+e^-x)`
    Sigmoid,
    /// `x·sigmoid(x)`
    Silu,
    /// GELU with the tanh approximation:
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    GeluTanh,
}

impl UnaryOp {
    /// Snake-case name used in dumps.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Square => "square",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::GeluTanh => "gelu_tanh",
        }
    }
}

/// Elementwise functions of two tensors (numpy broadcasting) or of a tensor
/// and a scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
}

impl BinaryOp {
    /// Snake-case name used in dumps.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
        }
    }
}

/// What a graph input carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Fed on every run (latents, text embeddings, timestep, ids).
    Activation,
    /// Loaded once from a checkpoint; the input's name is the diffusers tensor name.
    Weight,
}

/// Parameters of the sinusoidal timestep embedding (diffusers'
/// `get_timestep_embedding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimestepParams {
    /// Output width (even).
    pub dim: usize,
    /// Emit `[cos, sin]` instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// Subtracted from `dim/2` in the frequency exponent's denominator.
    pub downscale_freq_shift: Scalar,
    /// Multiplies the angles.
    pub scale: Scalar,
    /// Longest period of the embedding.
    pub max_period: Scalar,
}

/// An IR operation. Operand order and arity are part of each variant's
/// contract (see the variant docs); `infer.rs` checks them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A graph input (no operands). Names are unique within a graph.
    Input {
        /// Activation name, or diffusers checkpoint tensor name for weights.
        name: String,
        /// Activation or weight.
        kind: InputKind,
    },
    /// `f(x)` elementwise. Operands: x.
    Unary(UnaryOp),
    /// `a ∘ b` elementwise with numpy broadcasting. Operands: a, b (same dtype).
    Binary(BinaryOp),
    /// `x ∘ c` for a constant `c`. Operands: x.
    BinaryScalar {
        /// The operation.
        op: BinaryOp,
        /// The right-hand constant.
        scalar: Scalar,
    },
    /// Conversion to another dtype (the interpreter rounds to it). Operands: x.
    Cast(DType),
    /// `x · Wᵀ (+ b)`. Operands: x `[.., K]`, w `[N, K]`, optional bias `[N]`.
    Linear,
    /// Batched matrix product with broadcast batch dims. Operands: a `[.., M, K]`, b `[.., K, N]`.
    MatMul,
    /// 2-D convolution, channels-last. Operands: x `[N, H, W, Cin]`,
    /// w `[Cout, Cin/groups, KH, KW]`, optional bias `[Cout]`.
    Conv2d {
        /// Stride (height, width).
        stride: [usize; 2],
        /// Zero padding on each side (height, width).
        padding: [usize; 2],
        /// Channel groups.
        groups: usize,
    },
    /// Layer norm over the last axis. Operands: x, optionally weight and bias `[C]`.
    LayerNorm {
        /// Added to the variance.
        eps: Scalar,
    },
    /// RMS norm over the last axis. Operands: x, optionally weight `[C]`.
    RmsNorm {
        /// Added to the mean square.
        eps: Scalar,
    },
    /// Group norm, channels-last. Operands: x `[N, H, W, C]`, weight `[C]`, bias `[C]`.
    GroupNorm {
        /// Number of channel groups (divides C).
        groups: usize,
        /// Added to the variance.
        eps: Scalar,
    },
    /// Softmax over the last axis. Operands: x.
    Softmax,
    /// Scaled dot-product attention, no mask: `softmax(q·kᵀ·scale)·v` per batch
    /// and head. Operands: q `[B, Sq, H, D]`, k `[B, Sk, H, D]`, v `[B, Sk, H, Dv]`.
    Attention {
        /// Multiplies the scores (usually `1/√D`).
        scale: Scalar,
    },
    /// Rotary-embedding table from position ids (diffusers' `FluxPosEmbed`).
    /// Operand: ids `[S, axes]`. Output f32 `[S, Σaxes_dim/2, 2]` holding
    /// `(cos, sin)` for each rotated pair; axis `a` owns `axes_dim[a]/2`
    /// consecutive pairs with frequencies `theta^(-2j/axes_dim[a])`.
    RopeTable {
        /// Rotary width per id axis (each even).
        axes_dim: Vec<usize>,
        /// Base of the frequencies.
        theta: Scalar,
    },
    /// Rotates interleaved pairs `(x[2i], x[2i+1])` by the table's angle `i`.
    /// Operands: x `[B, S, H, D]`, table f32 `[S, D/2, 2]`.
    ApplyRope,
    /// Sinusoidal embedding of timesteps. Operand: t `[B]`. Output f32 `[B, dim]`.
    TimestepEmbedding(TimestepParams),
    /// Same elements, new shape (equal element count). Operand: x.
    Reshape(Shape),
    /// Axis permutation: output axis `i` is input axis `perm[i]`. Operand: x.
    Permute(Vec<usize>),
    /// `x[.., start..end, ..]` along one axis. Operand: x.
    Slice {
        /// The sliced axis.
        axis: usize,
        /// First index kept.
        start: usize,
        /// One past the last index kept.
        end: usize,
    },
    /// Concatenation along one axis. Operands: two or more tensors equal
    /// except along `axis`.
    Concat {
        /// The joined axis.
        axis: usize,
    },
    /// Nearest-neighbour upsampling, channels-last. Operand: x `[N, H, W, C]`.
    UpsampleNearest {
        /// Integer scale factor for both spatial axes.
        scale: usize,
    },
    /// The patches a convolution multiplies, channels-last (im2col). Operand:
    /// x `[N, H, W, C]`; output `[N, Ho, Wo, KH·KW·C]` (`Ho`, `Wo` as
    /// `Conv2d` computes them) where column `(ky·KW + kx)·C + c` of pixel
    /// `(n, oy, ox)` is `x[n, oy·sh − ph + ky, ox·sw − pw + kx, c]`, or 0
    /// where that lies in the zero padding. A `Conv2d` is then a `Linear`
    /// over the patches with its weight permuted to `[Cout, KH, KW, Cin]`.
    Im2col {
        /// Kernel size (height, width).
        kernel: [usize; 2],
        /// Stride (height, width).
        stride: [usize; 2],
        /// Zero padding on each side (height, width).
        padding: [usize; 2],
    },
    /// The dynamic quantization scale of x for an 8-bit float `dtype`:
    /// `max(amax, 1e-12) / max_finite(dtype)` where `amax` is the largest
    /// `|x|` over the whole tensor (output f32 `[1]`) or over each row of the
    /// last axis (output f32 `[.., 1]`). Operand: x.
    DynamicScale {
        /// The fp8 dtype the scale is for.
        dtype: DType,
        /// One scale per row of the last axis instead of one per tensor.
        per_row: bool,
    },
    /// `x · (1 / scale)` rounded (saturating) to an fp8 dtype, the
    /// reciprocal rounded to f32 once per scale: on the GPU one multiply per
    /// element instead of a division, and within one f32 ulp of `x / scale`
    /// before the fp8 rounding. Operands: x, scale (f32, `[1]` or x's shape
    /// with the last dim 1).
    Quantize(DType),
    /// A linear over quantized operands: `(xq · wqᵀ) · x_scale · w_scale (+ b)`.
    /// Operands: xq fp8 `[.., K]`, x_scale f32 `[1]` or `[.., 1]`, wq fp8
    /// `[N, K]`, w_scale f32 `[1]` or `[N, 1]`, optional bias `[N]` in `out`.
    ScaledLinear {
        /// Output dtype.
        out: DType,
    },
    /// Attention over fp8 e4m3 operands with per-tensor dequantization
    /// scales (`x ≈ x8 · x_scale`, the convention of [`Op::DynamicScale`]
    /// and [`Op::Quantize`]). Operands: q8 `[B, Sq, H, D]`, q_scale f32
    /// `[1]`, k8 `[B, Sk, H, D]`, k_scale f32 `[1]`, v `[B, Sk, H, Dv]`,
    /// v_scale f32 `[1]`; q8 and k8 are e4m3, v is not yet quantized (a
    /// float dtype): the op quantizes it as `quantize(v, v_scale)` to
    /// e4m3, where the kernel that lays v out for the fp8 kernel reads it
    /// anyway. Output bf16 `[B, Sq, H, Dv]`.
    ///
    /// Meaning (per batch, head and query row), as the fp8 kernel computes
    /// it: `S = f16(q8·k8ᵀ) · scale · q_scale · k_scale` (the kernel
    /// accumulates the e4m3 products in f16; a dot product past f16's
    /// 65504 is outside the op's domain: here it rounds to ±∞, there the
    /// result is undefined. fluxc's fp8 attention pass quantizes q and k
    /// into ±16, and 16·16·128 < 65504);
    /// dequantize v; `m = max S`;
    /// `P = exp(S − m)`; each `P` is rounded to e4m3 *after multiplying by
    /// 256* (`p8 = e4m3(256·P)`: the kernel quantizes the probabilities
    /// relative to the row max with 2⁸ headroom before the fp8 `P·V`
    /// product); `out = (Σ p8/256 · v) / (Σ p8/256)` (the kernel's tensor
    /// cores sum the rounded probabilities, one key tile at a time), rounded
    /// to bf16. An empty key sequence gives
    /// zeros, as [`Op::Attention`] does. (The kernel's online softmax rounds
    /// relative to the running max of the key tiles seen so far; where that
    /// is below the row's max, its rounding differs from this by e4m3
    /// noise.)
    ScaledAttention {
        /// Multiplies the scores (usually `1/√D`).
        scale: Scalar,
    },
}

/// Smallest amax a dynamic scale uses, so an all-zero tensor (or row) gets a
/// tiny positive scale instead of zero (torchao's `EPS`); see
/// [`Op::DynamicScale`].
pub const MIN_AMAX: f32 = 1e-12;

/// The broad class of an op, as fusion and codegen see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpClass {
    /// Graph inputs.
    Input,
    /// Pointwise math (one output element from the same element of each input).
    Elementwise,
    /// Reductions over an axis (norms, softmax).
    Reduction,
    /// Matrix products (linear, matmul, conv).
    Gemm,
    /// Attention (bf16 or fp8).
    Attention,
    /// Data movement: views and copies (reshape, permute, slice, concat,
    /// upsample, im2col).
    Movement,
    /// Computed tables (rotary table, timestep embedding).
    Table,
}

impl Op {
    /// The op's snake-case kind name (no attributes), used in dumps and stats.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Input {
                kind: InputKind::Activation,
                ..
            } => "input",
            Op::Input {
                kind: InputKind::Weight,
                ..
            } => "weight",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::BinaryScalar { op, .. } => match op {
                BinaryOp::Add => "add_scalar",
                BinaryOp::Sub => "sub_scalar",
                BinaryOp::Mul => "mul_scalar",
                BinaryOp::Div => "div_scalar",
                BinaryOp::Max => "max_scalar",
                BinaryOp::Min => "min_scalar",
            },
            Op::Cast(_) => "cast",
            Op::Linear => "linear",
            Op::MatMul => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::GroupNorm { .. } => "group_norm",
            Op::Softmax => "softmax",
            Op::Attention { .. } => "attention",
            Op::RopeTable { .. } => "rope_table",
            Op::ApplyRope => "apply_rope",
            Op::TimestepEmbedding(_) => "timestep_embedding",
            Op::Reshape(_) => "reshape",
            Op::Permute(_) => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::UpsampleNearest { .. } => "upsample_nearest",
            Op::Im2col { .. } => "im2col",
            Op::DynamicScale { .. } => "dynamic_scale",
            Op::Quantize(_) => "quantize",
            Op::ScaledLinear { .. } => "scaled_linear",
            Op::ScaledAttention { .. } => "scaled_attention",
        }
    }

    /// The op's class.
    pub fn class(&self) -> OpClass {
        match self {
            Op::Input { .. } => OpClass::Input,
            Op::Unary(_) | Op::Binary(_) | Op::BinaryScalar { .. } | Op::Cast(_) => {
                OpClass::Elementwise
            }
            Op::ApplyRope => OpClass::Elementwise,
            Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::GroupNorm { .. } | Op::Softmax => {
                OpClass::Reduction
            }
            Op::Linear | Op::MatMul | Op::Conv2d { .. } | Op::ScaledLinear { .. } => OpClass::Gemm,
            Op::DynamicScale { .. } => OpClass::Reduction,
            Op::Quantize(_) => OpClass::Elementwise,
            Op::Attention { .. } | Op::ScaledAttention { .. } => OpClass::Attention,
            Op::Reshape(_)
            | Op::Permute(_)
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::UpsampleNearest { .. }
            | Op::Im2col { .. } => OpClass::Movement,
            Op::RopeTable { .. } | Op::TimestepEmbedding(_) => OpClass::Table,
        }
    }

    /// Pointwise ops: each output element depends only on the same (broadcast)
    /// element of each operand. `ApplyRope` counts: it reads the partner
    /// element of the same pair, which a fused kernel always has at hand.
    pub fn is_elementwise(&self) -> bool {
        self.class() == OpClass::Elementwise
    }

    /// Reductions over the last axis (or channel groups).
    pub fn is_reduction(&self) -> bool {
        self.class() == OpClass::Reduction
    }

    /// Matrix products.
    pub fn is_gemm(&self) -> bool {
        self.class() == OpClass::Gemm
    }

    /// True for graph inputs that are checkpoint weights.
    pub fn is_weight(&self) -> bool {
        matches!(
            self,
            Op::Input {
                kind: InputKind::Weight,
                ..
            }
        )
    }

    /// The attributes as `key=value` pairs for dumps (empty when none).
    pub fn attrs(&self) -> String {
        match self {
            Op::Input { name, .. } => format!("\"{name}\""),
            Op::BinaryScalar { scalar, .. } => format!("{scalar}"),
            Op::Cast(d) => d.to_string(),
            Op::Conv2d {
                stride,
                padding,
                groups,
            } => format!(
                "stride={}x{} pad={}x{} groups={groups}",
                stride[0], stride[1], padding[0], padding[1]
            ),
            Op::LayerNorm { eps } | Op::RmsNorm { eps } => format!("eps={eps}"),
            Op::GroupNorm { groups, eps } => format!("groups={groups} eps={eps}"),
            Op::Attention { scale } | Op::ScaledAttention { scale } => format!("scale={scale}"),
            Op::RopeTable { axes_dim, theta } => format!("axes={axes_dim:?} theta={theta}"),
            Op::TimestepEmbedding(p) => format!(
                "dim={} flip={} shift={} scale={} max_period={}",
                p.dim, p.flip_sin_to_cos, p.downscale_freq_shift, p.scale, p.max_period
            ),
            Op::Reshape(s) => join(s.dims()),
            Op::Permute(p) => join(p),
            Op::Slice { axis, start, end } => format!("axis={axis} {start}..{end}"),
            Op::Concat { axis } => format!("axis={axis}"),
            Op::UpsampleNearest { scale } => format!("x{scale}"),
            Op::Im2col {
                kernel,
                stride,
                padding,
            } => format!(
                "kernel={}x{} stride={}x{} pad={}x{}",
                kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]
            ),
            Op::DynamicScale { dtype, per_row } => {
                format!(
                    "{dtype} {}",
                    if *per_row { "per_row" } else { "per_tensor" }
                )
            }
            Op::Quantize(dtype) => dtype.to_string(),
            Op::ScaledLinear { out } => format!("out={out}"),
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Linear
            | Op::MatMul
            | Op::Softmax
            | Op::ApplyRope => String::new(),
        }
    }
}

/// `1,2,3`: dims or axes inside an op's attribute brackets.
fn join(values: &[usize]) -> String {
    let strings: Vec<String> = values.iter().map(usize::to_string).collect();
    strings.join(",")
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attrs = self.attrs();
        if attrs.is_empty() {
            f.write_str(self.kind_name())
        } else {
            write!(f, "{}[{}]", self.kind_name(), attrs)
        }
    }
}
