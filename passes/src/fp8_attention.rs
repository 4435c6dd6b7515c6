//! fp8 attention: rewrites bf16 `Attention`s with 128-wide heads into
//! `ScaledAttention` over e4m3 operands with per-tensor dynamic scales.
//!
//! Each selected `o = attention[scale](q, k, v)` becomes
//!
//! ```text
//! qs = dynamic_scale(q, f8e4m3, per_tensor)    q8 = quantize(q · (1/28), qs)
//! ks = dynamic_scale(k, f8e4m3, per_tensor)    k8 = quantize(k · (1/28), ks)
//! vs = dynamic_scale(v, f8e4m3, per_tensor)
//! o  = scaled_attention[scale · 28²](q8, qs, k8, ks, v, vs)   (bf16)
//! ```
//!
//! (v goes in unquantized: the op quantizes it, in the kernel that lays v
//! out key-innermost for the fp8 kernel and reads it anyway, instead of a
//! quantize pass of its own.)
//!
//! q and k are quantized into ±16 ([`FP8_ATTENTION_QK_RANGE`]), not e4m3's
//! ±448: the kernel accumulates `q8·k8ᵀ` in f16 (half the registers and
//! half the softmax instructions of f32 scores), and 16·16·128 < 65504 keeps
//! every score in range. The scale stays the plain `dynamic_scale` (which
//! then also serves v) and the factor 448/16 = 28 moves onto the values and
//! into the score scale. Precision: e4m3's relative precision is the same
//! over its normal range; the smallest normal is now 2⁻¹⁰ of the largest
//! value instead of 2⁻¹⁵, which only elements too small to matter in a dot
//! product reach.
//!
//! except that a q or k which is RMS-normalized and then rotated (FLUX's
//! `apply_rope(rms_norm(x, w))`, or `apply_rope(concat(rms_norm(x₁, w₁),
//! rms_norm(x₂, w₂)))` in the double blocks) gets a scale from its norm
//! weights instead of from its values:
//!
//! ```text
//! qs = dynamic_scale(concat(w₁, w₂), f8e4m3, per_tensor)     (max|w| / 448)
//! q8 = quantize(q · (1/(28·√D)), qs)
//! ```
//!
//! and the attention's score scale takes the 28·√D back (so `q ≈ q8 · qs ·
//! 28·√D`): in effect q is quantized by `√D · max|w| / 16`, with the factor
//! kept out of the scale so that the scale is a plain `dynamic_scale` of
//! weights, which the loader derives. Why that is safe: an RMS-normalized
//! row has `|x_i| / rms(x) ≤ √D`, so every element of the norm's output is
//! at most `√D · max|w|` in magnitude, and a rotation of pairs keeps each
//! pair's length, so no element of q8 reaches past 16 (bf16 rounding may
//! graze it: e4m3 rounds up to 17 to 16, and 18·18·128 is still in f16's
//! range). Why it pays: the
//! scale reads only weights, so it is hoisted to load time, and the scaling
//! and quantize become an elementwise tail of the kernel that normalizes
//! and rotates q, which then writes e4m3 directly, instead of a grid-wide
//! absmax pass and a quantize pass over q on every run. A concatenation of
//! normalized parts (the double blocks' text and image streams) is rotated
//! and quantized part by part, with the table's rows of each part, and the
//! e4m3 parts concatenated: the same values, but each part's norm, rotation
//! and quantization are one kernel (`quantize_parts`). Precision is the same: a per-tensor
//! scale puts the largest possible value at 448 either way, and e4m3's
//! relative precision is the same over its normal range.
//!
//! Why: attention is about a fifth of FLUX.1's FLOPs at 1024² (14.9 of 74.4
//! TFLOP per forward for dev), and Hopper's fp8 tensor cores run twice the
//! bf16 rate. The fp8 kernel also keeps the softmax probabilities in e4m3
//! for the `P·V` product; `Op::ScaledAttention` documents that rounding.
//!
//! When: the pass runs in the pipeline's `fp8` step when the fp8 mode is not
//! off *and* the [`Fp8Policy`]'s `attention` switch is on (`[passes]
//! fp8_attention`, on by default: measured faster on the H200 at the same
//! error). The scales are per tensor whatever the mode: the mode's per-row
//! choice is about linears, and a per-tensor scale is what the kernel folds
//! into its score scale (`q_scale · k_scale`) and its output (`v_scale`)
//! without per-element work.
//!
//! Which: every attention whose operands are bf16, whose head width (q's
//! last dim) is 128 and whose v is as wide. Others are left alone:
//! - other head widths: the fp8 kernel exists for 128-wide heads only
//!   (FLUX.1's); the VAE's one 512-wide head and test models' narrower
//!   heads keep their bf16 (or f32) paths;
//! - a v of another width: the kernel's `P·V` tile is `D` wide;
//! - other dtypes: the kernel writes bf16, and an f32 model's attention
//!   stays exact.
//!
//! A tensor that several selected attentions read (or one attention reads
//! twice) is quantized once and the result shared; the replaced attentions
//! are removed.

use std::collections::HashMap;

use fluxc_ir::{BinaryOp, DType, Graph, IrError, NodeId, Op, Scalar};

use crate::{Fp8Mode, Fp8Policy};

/// The head width the fp8 attention kernel takes.
pub const FP8_ATTENTION_HEAD_DIM: usize = 128;

/// The fp8 dtype of the attention operands.
pub const FP8_ATTENTION_DTYPE: DType = DType::F8E4M3;

/// The range q8 and k8 are quantized into: the kernel accumulates `q8·k8ᵀ`
/// in f16, and 16·16·128 < 65504 (see the module docs).
pub const FP8_ATTENTION_QK_RANGE: f32 = 16.0;

/// What q and k are divided by on top of their scale: e4m3's 448 over
/// [`FP8_ATTENTION_QK_RANGE`].
const QK_SHRINK: f32 = 448.0 / FP8_ATTENTION_QK_RANGE;

/// Rewrites every attention the policy and [`is_fp8_attention_candidate`]
/// select into dynamic fp8 quantization of q, k and v followed by a
/// `ScaledAttention` (see the module docs), and returns how many were
/// rewritten. With [`Fp8Mode::Off`] or `policy.attention` off the graph is
/// left untouched and 0 is returned.
pub fn insert_fp8_attention(
    graph: &mut Graph,
    mode: Fp8Mode,
    policy: &Fp8Policy,
) -> Result<usize, IrError> {
    if mode == Fp8Mode::Off || !policy.attention {
        return Ok(0);
    }
    let selected: Vec<NodeId> = graph
        .topo_order()?
        .into_iter()
        .filter(|&id| is_fp8_attention_candidate(graph, id))
        .collect();
    let mut quantized: HashMap<(NodeId, bool), Quantized> = HashMap::new();
    for &attention in &selected {
        rewrite(graph, attention, &mut quantized)?;
    }
    if !selected.is_empty() {
        graph.remove_dead_nodes();
    }
    Ok(selected.len())
}

/// Whether `id` is an attention the fp8 kernel can run: bf16 operands, q
/// and v both [`FP8_ATTENTION_HEAD_DIM`] wide.
pub fn is_fp8_attention_candidate(graph: &Graph, id: NodeId) -> bool {
    if !matches!(graph.node(id).op, Op::Attention { .. }) {
        return false;
    }
    let operands = graph.operands(id);
    let [q, _, v] = operands[..] else {
        return false;
    };
    let width = |x: NodeId| graph.ty(x).shape.dims().last().copied();
    graph.ty(q).dtype == DType::BF16
        && width(q) == Some(FP8_ATTENTION_HEAD_DIM)
        && width(v) == Some(FP8_ATTENTION_HEAD_DIM)
}

/// An attention operand in fp8: the quantized tensor (v: the tensor
/// itself, which the op quantizes), its scale, and the factor the
/// attention's score scale takes for it (q and k: 28, or 28·√D for an
/// operand quantized by its norm bound, see [`quantize_by_norm_bound`];
/// v: 1).
#[derive(Clone, Copy)]
struct Quantized {
    x8: NodeId,
    scale: NodeId,
    factor: f32,
}

/// Replaces one attention by its fp8 form; the old node is left dead.
/// `quantized` holds the tensors already quantized, keyed by the tensor and
/// whether it was read as q or k (which may take the norm bound and its √D
/// factor) rather than as v (which never does).
fn rewrite(
    graph: &mut Graph,
    attention: NodeId,
    quantized: &mut HashMap<(NodeId, bool), Quantized>,
) -> Result<(), IrError> {
    let Op::Attention { scale } = graph.node(attention).op else {
        return Err(IrError::Invalid(format!("{attention} is not an attention")));
    };
    let scope = graph.node(attention).scope.clone();
    let mut args = Vec::with_capacity(6);
    let mut score_scale = scale.get();
    for (i, x) in graph.operands(attention).into_iter().enumerate() {
        let q_or_k = i < 2;
        let q = match quantized.get(&(x, q_or_k)) {
            Some(&q) => q,
            None => {
                // q and k (not v) may be scaled by their norms' bound.
                let bound = if q_or_k {
                    rotated_norm_weights(graph, x)
                } else {
                    None
                };
                let q = match bound {
                    Some(weights) => quantize_by_norm_bound(graph, x, &weights, &scope)?,
                    None => {
                        // x's own absmax scale, which serves it as v (the
                        // op quantizes v itself) and as q or k.
                        let as_v = match quantized.get(&(x, false)) {
                            Some(&v) => v,
                            None => {
                                let scale_op = Op::DynamicScale {
                                    dtype: FP8_ATTENTION_DTYPE,
                                    per_row: false,
                                };
                                Quantized {
                                    x8: x,
                                    scale: graph.add_node(scale_op, &[x], &scope)?,
                                    factor: 1.0,
                                }
                            }
                        };
                        quantized.insert((x, false), as_v);
                        let xs = as_v.scale;
                        if q_or_k {
                            quantize_shrunk(graph, x, xs, QK_SHRINK, &scope)?
                        } else {
                            as_v
                        }
                    }
                };
                quantized.insert((x, q_or_k), q);
                q
            }
        };
        args.extend([q.x8, q.scale]);
        if q_or_k {
            score_scale *= q.factor;
        }
    }
    let op = Op::ScaledAttention {
        scale: Scalar(score_scale),
    };
    let o = graph.add_node(op, &args, &scope)?;
    graph.replace_all_uses(attention, o)
}

/// The norm weights of `x` when it is `apply_rope(rms_norm(·, w))` or
/// `apply_rope(concat(rms_norm(·, w₁), …))` along an axis other than the
/// last (the normalized one), every norm with a weight; `None` otherwise.
fn rotated_norm_weights(graph: &Graph, x: NodeId) -> Option<Vec<NodeId>> {
    if !matches!(graph.node(x).op, Op::ApplyRope) {
        return None;
    }
    let rotated = graph.operands(x)[0];
    let last_axis = graph.ty(rotated).shape.dims().len().checked_sub(1)?;
    let parts = match graph.node(rotated).op {
        Op::Concat { axis } if axis != last_axis => graph.operands(rotated),
        _ => vec![rotated],
    };
    parts
        .into_iter()
        .map(|part| {
            let operands = graph.operands(part);
            match (&graph.node(part).op, operands.as_slice()) {
                (Op::RmsNorm { .. }, &[_, w]) => Some(w),
                _ => None,
            }
        })
        .collect()
}

/// `x` (RMS-normalized by `weights`, then rotated) quantized by its norms'
/// bound (see the module docs) as
///
/// ```text
/// x8 = quantize(x · (1/(28·√D)), dynamic_scale(concat(weights)))
/// ```
///
/// i.e. by the scale `√D · max|w| / 16` with the 28·√D moved onto the
/// values (an elementwise tail of the kernel that produces x) and into the
/// attention's score scale (the returned factor), so that the scale itself
/// is a plain `dynamic_scale` of weights, which the loader computes.
fn quantize_by_norm_bound(
    graph: &mut Graph,
    x: NodeId,
    weights: &[NodeId],
    scope: &str,
) -> Result<Quantized, IrError> {
    let width = graph.ty(x).shape.dims().last().copied().unwrap_or(1);
    let all = match weights {
        [w] => *w,
        _ => graph.add_node(Op::Concat { axis: 0 }, weights, scope)?,
    };
    let scale = graph.add_node(
        Op::DynamicScale {
            dtype: FP8_ATTENTION_DTYPE,
            per_row: false,
        },
        &[all],
        scope,
    )?;
    let factor = QK_SHRINK * (width as f32).sqrt();
    match rotated_parts(graph, x) {
        Some((parts, table)) => quantize_parts(graph, &parts, table, scale, factor, scope),
        None => quantize_shrunk(graph, x, scale, factor, scope),
    }
}

/// The parts of `x = apply_rope(concat(parts, axis 1), table)` (the double
/// blocks' text and image q or k, concatenated along the sequence), with
/// the table; `None` for any other `x`.
fn rotated_parts(graph: &Graph, x: NodeId) -> Option<(Vec<NodeId>, NodeId)> {
    if !matches!(graph.node(x).op, Op::ApplyRope) {
        return None;
    }
    let [rotated, table] = graph.operands(x)[..] else {
        return None;
    };
    match graph.node(rotated).op {
        Op::Concat { axis: 1 } => Some((graph.operands(rotated), table)),
        _ => None,
    }
}

/// `concat(parts, 1)` rotated by `table` and quantized as
/// [`quantize_shrunk`] does, one part at a time:
///
/// ```text
/// x8 = concat(quantize(apply_rope(partᵢ, table[rows of partᵢ]) · (1/factor), scale), 1)
/// ```
///
/// the same values (rotation, scaling and quantization act on each
/// position alone), but each part's RMSNorm, rotation and quantization
/// fuse into one row kernel that writes e4m3, where the norm of each part,
/// then one kernel over the concatenation, wrote and read bf16 between
/// them. Codegen writes the e4m3 concatenation in place (each part's
/// kernel writes its rows), so nothing is copied.
fn quantize_parts(
    graph: &mut Graph,
    parts: &[NodeId],
    table: NodeId,
    scale: NodeId,
    factor: f32,
    scope: &str,
) -> Result<Quantized, IrError> {
    let mut quantized = Vec::with_capacity(parts.len());
    let mut start = 0;
    for &part in parts {
        let rows = graph.ty(part).shape.dims()[1];
        let end = start + rows;
        let rows_table = graph.add_node(
            Op::Slice {
                axis: 0,
                start,
                end,
            },
            &[table],
            scope,
        )?;
        let rotated = graph.add_node(Op::ApplyRope, &[part, rows_table], scope)?;
        quantized.push(quantize_shrunk(graph, rotated, scale, factor, scope)?.x8);
        start = end;
    }
    let x8 = graph.add_node(Op::Concat { axis: 1 }, &quantized, scope)?;
    Ok(Quantized { x8, scale, factor })
}

/// `quantize(x · (1/factor), scale)`, which dequantizes as `x8 · scale ·
/// factor`: the attention's score scale takes the factor.
fn quantize_shrunk(
    graph: &mut Graph,
    x: NodeId,
    scale: NodeId,
    factor: f32,
    scope: &str,
) -> Result<Quantized, IrError> {
    let shrunk = graph.add_node(
        Op::BinaryScalar {
            op: BinaryOp::Mul,
            scalar: Scalar(1.0 / factor),
        },
        &[x],
        scope,
    )?;
    let x8 = graph.add_node(Op::Quantize(FP8_ATTENTION_DTYPE), &[shrunk, scale], scope)?;
    Ok(Quantized { x8, scale, factor })
}
