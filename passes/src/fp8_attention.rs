//! fp8 attention: rewrites bf16 `Attention`s with 128-wide heads into
//! `ScaledAttention` over e4m3 operands with per-tensor dynamic scales.
//!
//! Each selected `o = attention[scale](q, k, v)` becomes
//!
//! ```text
//! qs = dynamic_scale(q, f8e4m3, per_tensor)    q8 = quantize(q, qs)
//! ks = dynamic_scale(k, f8e4m3, per_tensor)    k8 = quantize(k, ks)
//! vs = dynamic_scale(v, f8e4m3, per_tensor)    v8 = quantize(v, vs)
//! o  = scaled_attention[scale](q8, qs, k8, ks, v8, vs)        (bf16)
//! ```
//!
//! Why: attention is about a fifth of FLUX.1's FLOPs at 1024² (14.9 of 74.4
//! TFLOP per forward for dev), and Hopper's fp8 tensor cores run twice the
//! bf16 rate. The fp8 kernel also keeps the softmax probabilities in e4m3
//! for the `P·V` product; `Op::ScaledAttention` documents that rounding.
//!
//! When: the pass runs in the pipeline's `fp8` step when the fp8 mode is not
//! off *and* the [`Fp8Policy`]'s `attention` switch is on (`[passes]
//! fp8_attention = true`; off by default until the kernel is measured on the
//! GPU). The scales are per tensor whatever the mode: the mode's per-row
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

use fluxc_ir::{DType, Graph, IrError, NodeId, Op};

use crate::{Fp8Mode, Fp8Policy};

/// The head width the fp8 attention kernel takes.
pub const FP8_ATTENTION_HEAD_DIM: usize = 128;

/// The fp8 dtype of the attention operands.
pub const FP8_ATTENTION_DTYPE: DType = DType::F8E4M3;

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
    let mut quantized: HashMap<NodeId, (NodeId, NodeId)> = HashMap::new();
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

/// Replaces one attention by its fp8 form; the old node is left dead.
fn rewrite(
    graph: &mut Graph,
    attention: NodeId,
    quantized: &mut HashMap<NodeId, (NodeId, NodeId)>,
) -> Result<(), IrError> {
    let Op::Attention { scale } = graph.node(attention).op else {
        return Err(IrError::Invalid(format!("{attention} is not an attention")));
    };
    let scope = graph.node(attention).scope.clone();
    let mut args = Vec::with_capacity(6);
    for x in graph.operands(attention) {
        let (x8, xs) = match quantized.get(&x) {
            Some(&pair) => pair,
            None => {
                let scale_op = Op::DynamicScale {
                    dtype: FP8_ATTENTION_DTYPE,
                    per_row: false,
                };
                let xs = graph.add_node(scale_op, &[x], &scope)?;
                let x8 = graph.add_node(Op::Quantize(FP8_ATTENTION_DTYPE), &[x, xs], &scope)?;
                quantized.insert(x, (x8, xs));
                (x8, xs)
            }
        };
        args.extend([x8, xs]);
    }
    let o = graph.add_node(Op::ScaledAttention { scale }, &args, &scope)?;
    graph.replace_all_uses(attention, o)
}
