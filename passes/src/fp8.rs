//! fp8 insertion: rewrites selected `Linear`s into fp8 GEMMs with dynamic
//! scales, as torchao's `float8_dynamic_activation_float8_weight` does.
//!
//! Each selected linear `y = x · wᵀ (+ b)` becomes
//!
//! ```text
//! xs = dynamic_scale(x, f8e4m3)      xq = quantize(x, xs)
//! ws = dynamic_scale(w, f8e4m3)      wq = quantize(w, ws)
//! y  = scaled_linear(xq, xs, wq, ws, b, out = dtype of x)
//! ```
//!
//! Why: Hopper's fp8 tensor cores run twice as many FLOPs as bf16 ones, and
//! FLUX's transformer-block linears are large, compute-bound GEMMs. The
//! activation scale is dynamic (computed from the activation on every run),
//! so no calibration data is needed. With [`Fp8Mode::DynamicTensor`] there is
//! one scale per activation tensor and one per weight; with
//! [`Fp8Mode::DynamicRow`] one per activation row and one per weight output
//! channel (the weight's rows, scale shape `[N, 1]`), which tracks outliers
//! better. The weight side (`ws`, `wq`) reads only the weight, so the later
//! pass that hoists weight-only subgraphs to load time turns it into a
//! one-time quantization of the checkpoint: at run time only the activation
//! is quantized. (Were a weight computed from activations, its quantization
//! would simply run on every call; the meaning is the same.)
//!
//! Which linears: those whose node scope (e.g.
//! `transformer_blocks.3.attn.to_q`) matches an include glob of the
//! [`Fp8Policy`] and no exclude glob (`*` matches any characters, dots
//! included), whose input has at least the policy's `min_rows` rows, and
//! whose shape is not one of the policy's `bf16_shapes` (shapes the tuner
//! measured faster in bf16); and, when the policy's `one_row` switch is on,
//! every one-row linear with at least [`ONE_ROW_MIN_WEIGHTS`] weights
//! (FLUX's stacked modulation product, which no scope names).
//! Linears whose input is not a float wider than fp8 are left alone. A
//! tensor feeding several selected linears (the shared input of
//! q/k/v, a shared weight) is quantized once and the result shared; the
//! replaced linears are removed.
//!
//! Attention is quantized by its own pass, `fp8_attention`, in the same
//! pipeline step, when the policy's `attention` switch is on.

use std::collections::HashMap;

use fluxc_ir::{DType, Graph, IrError, NodeId, Op};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{Fp8Mode, Fp8Policy};

/// The fp8 dtype activations and weights are quantized to (OCP E4M3, as
/// torchao uses for inference).
pub const FP8_DTYPE: DType = DType::F8E4M3;

/// Rewrites every linear selected by `policy` into dynamic fp8 quantization
/// of its input and weight followed by a `ScaledLinear` (see the module
/// docs), and returns how many linears were rewritten. With
/// [`Fp8Mode::Off`] the graph is left untouched and 0 is returned.
///
/// Fails with [`IrError::Invalid`] when a policy glob does not parse.
pub fn insert_fp8(graph: &mut Graph, mode: Fp8Mode, policy: &Fp8Policy) -> Result<usize, IrError> {
    let per_row = match mode {
        Fp8Mode::Off => return Ok(0),
        Fp8Mode::DynamicTensor => false,
        Fp8Mode::DynamicRow => true,
    };
    let selector = ScopeSelector::new(policy)?;
    let linears: Vec<NodeId> = graph
        .topo_order()?
        .into_iter()
        .filter(|&id| {
            is_quantizable_linear(graph, id)
                && if is_large_one_row(graph, id) {
                    policy.one_row
                } else {
                    selector.selects(&graph.node(id).scope)
                        && input_rows(graph, id) >= policy.min_rows
                        && !policy.bf16_shapes.contains(&linear_shape(graph, id))
                }
        })
        .collect();
    let mut quantized = Quantized::new(per_row);
    for &linear in &linears {
        rewrite_linear(graph, linear, &mut quantized)?;
    }
    if !linears.is_empty() {
        graph.remove_dead_nodes();
    }
    Ok(linears.len())
}

/// Weights from which a one-row linear counts as large: the policy's
/// `one_row` switch alone decides whether it is quantized. 2²⁴ (32 MiB in
/// bf16): below that a one-row product is too short for halving its bytes
/// to matter (FLUX's time and text embedders, 3 to 18 MB, stay bf16), above
/// it only FLUX's stacked modulation product (3.2 G weights).
pub const ONE_ROW_MIN_WEIGHTS: usize = 1 << 24;

/// Whether `id` (a linear) has one input row and at least
/// [`ONE_ROW_MIN_WEIGHTS`] weights.
fn is_large_one_row(graph: &Graph, id: NodeId) -> bool {
    let w = graph.operands(id)[1];
    input_rows(graph, id) == 1 && graph.ty(w).shape.numel() >= ONE_ROW_MIN_WEIGHTS
}

/// A compiled [`Fp8Policy`]: decides from a node's scope whether its linear
/// is quantized.
#[derive(Clone, Debug)]
pub struct ScopeSelector {
    include: GlobSet,
    exclude: GlobSet,
}

impl ScopeSelector {
    /// Compiles the policy's globs. Fails with [`IrError::Invalid`], naming
    /// the glob, when one does not parse.
    pub fn new(policy: &Fp8Policy) -> Result<Self, IrError> {
        Ok(ScopeSelector {
            include: glob_set("include", &policy.include)?,
            exclude: glob_set("exclude", &policy.exclude)?,
        })
    }

    /// True when `scope` matches an include glob and no exclude glob.
    pub fn selects(&self, scope: &str) -> bool {
        self.include.is_match(scope) && !self.exclude.is_match(scope)
    }
}

/// One set of the policy's `which` globs (`include` or `exclude`).
fn glob_set(which: &str, globs: &[String]) -> Result<GlobSet, IrError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in globs {
        let glob = Glob::new(pattern).map_err(|e| {
            IrError::Invalid(format!(
                "fp8 policy: bad {which} glob `{pattern}`: {}",
                e.kind()
            ))
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| IrError::Invalid(format!("fp8 policy: bad {which} globs: {e}")))
}

/// A linear's `[rows, in_features, out_features]`.
pub fn linear_shape(graph: &Graph, linear: NodeId) -> [usize; 3] {
    let w = graph.ty(graph.operands(linear)[1]);
    let dims = w.shape.dims();
    let (out, k) = (
        dims.first().copied().unwrap_or(1),
        dims.get(1).copied().unwrap_or(1),
    );
    [input_rows(graph, linear), k, out]
}

/// Rows of a linear's input (its elements over the last axis).
fn input_rows(graph: &Graph, linear: NodeId) -> usize {
    let x = graph.ty(graph.operands(linear)[0]);
    let k = x.shape.dims().last().copied().unwrap_or(1).max(1);
    x.shape.numel() / k
}

/// A `Linear` whose input is a float wider than fp8 (already-fp8 or integer
/// inputs are left alone).
fn is_quantizable_linear(graph: &Graph, id: NodeId) -> bool {
    if graph.node(id).op != Op::Linear {
        return false;
    }
    let dtype = match graph.operands(id).first() {
        Some(&x) => graph.ty(x).dtype,
        None => return false,
    };
    dtype.is_float() && !dtype.is_fp8()
}

/// The quantized form (scale, values) of each tensor quantized so far, so a
/// tensor feeding several linears is quantized once.
struct Quantized {
    per_row: bool,
    done: HashMap<NodeId, (NodeId, NodeId)>,
}

impl Quantized {
    fn new(per_row: bool) -> Self {
        Quantized {
            per_row,
            done: HashMap::new(),
        }
    }

    /// `(scale, quantized)` of `value`, adding `dynamic_scale` and `quantize`
    /// nodes in `scope` the first time. Per row, a scale covers each row of
    /// the last axis: an activation row, or a weight's output channel.
    fn get(
        &mut self,
        graph: &mut Graph,
        value: NodeId,
        scope: &str,
    ) -> Result<(NodeId, NodeId), IrError> {
        if let Some(&pair) = self.done.get(&value) {
            return Ok(pair);
        }
        let scale_op = Op::DynamicScale {
            dtype: FP8_DTYPE,
            per_row: self.per_row,
        };
        let scale = graph.add_node(scale_op, &[value], scope)?;
        let q = graph.add_node(Op::Quantize(FP8_DTYPE), &[value, scale], scope)?;
        self.done.insert(value, (scale, q));
        Ok((scale, q))
    }
}

/// Replaces one linear by its fp8 form; the old node is left dead.
fn rewrite_linear(
    graph: &mut Graph,
    linear: NodeId,
    quantized: &mut Quantized,
) -> Result<(), IrError> {
    let operands = graph.operands(linear);
    let (x, w, bias) = match operands[..] {
        [x, w] => (x, w, None),
        [x, w, b] => (x, w, Some(b)),
        _ => {
            return Err(IrError::Invalid(format!(
                "{linear} (linear) has {} operands",
                operands.len()
            )))
        }
    };
    let scope = graph.node(linear).scope.clone();
    let out = graph.ty(x).dtype;
    let (xs, xq) = quantized.get(graph, x, &scope)?;
    let (ws, wq) = quantized.get(graph, w, &scope)?;
    let mut args = vec![xq, xs, wq, ws];
    args.extend(bias);
    let y = graph.add_node(Op::ScaledLinear { out }, &args, &scope)?;
    graph.replace_all_uses(linear, y)
}
