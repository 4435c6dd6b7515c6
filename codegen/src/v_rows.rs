//! fp8 attention's v read where it lies: the value columns of a fused
//! q/k/v projection's output, or the text and image streams' value columns
//! one after the other, are not copied out before the V layout kernel.
//!
//! Why: in FLUX, v is a slice of the fused projection's output (single
//! blocks) or the concatenation of two such slices along the sequence
//! (double blocks: text rows, then image rows). Materialized, the copy costs
//! a 28 MB write per block at 1024² and the V layout kernel reads it back,
//! although that kernel can read rows from anywhere: it takes two row
//! sources (`kernels/attention_fp8_v.cu`). v's whole-tensor fp8 scale is
//! then computed by a kernel that evaluates the slices and stores only the
//! scale (`kernels::pointwise_with_tensor_scale` with no outputs).
//!
//! [`in_place_values`] finds the groups where that is exact: a pointwise
//! group made only of the slices (and their concatenation) whose one value
//! is read by nothing but fp8 attentions (as v) and the whole-tensor scale
//! that the group computes, every slice taking a 16-byte-aligned column
//! range of the last axis of a bf16 `[B, S, C]` tensor. Anything else keeps
//! the copy.

use std::collections::HashMap;

use fluxc_ir::{DType, Graph, NodeId, Op};
use fluxc_passes::fusion::{FusionPlan, GroupKind};

use crate::lower::storage_of;

/// Rows of v in one tensor: key `r` of batch `b` (r < `rows`) starts at
/// element `offset + b · batch_stride + r · row_stride` of `node`'s buffer,
/// with the heads' values contiguous from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VRows {
    /// The tensor holding the rows.
    pub node: NodeId,
    /// Elements from its start to the first row's first value.
    pub offset: u64,
    /// Keys taken from it.
    pub rows: u32,
    /// Elements between consecutive keys.
    pub row_stride: u32,
    /// Elements between batches.
    pub batch_stride: u32,
}

impl VRows {
    /// A contiguous v `[B, S, H, D]` held by `node`.
    pub fn contiguous(node: NodeId, [_, s, h, d]: [usize; 4]) -> Option<VRows> {
        Some(VRows {
            node,
            offset: 0,
            rows: u32::try_from(s).ok()?,
            row_stride: u32::try_from(h * d).ok()?,
            batch_stride: u32::try_from(s * h * d).ok()?,
        })
    }
}

/// Element alignment of the V layout kernel's 16-byte loads, in bf16 values.
const ALIGN_ELEMENTS: usize = 8;

/// The v values (storage nodes) that fp8 attention reads in place, with
/// their one or two row sources. `fused_scales` maps a pointwise group to
/// the whole-tensor scale it computes (`lower::fused_tensor_scales`); only
/// those groups qualify, since their kernel then still computes v's scale.
pub fn in_place_values(
    graph: &Graph,
    plan: &FusionPlan,
    fused_scales: &HashMap<usize, (usize, NodeId)>,
) -> HashMap<NodeId, Vec<VRows>> {
    let mut found = HashMap::new();
    for (&g, &(_, scale)) in fused_scales {
        let x = storage_of(graph, graph.operands(scale)[0]);
        let group = &plan.groups[g];
        if group.kind != GroupKind::Pointwise || plan.group_outputs(graph, g) != [x] {
            continue;
        }
        let Some(attention_dims) = attention_readers(graph, x, scale) else {
            continue;
        };
        let Some(parts) = row_sources(graph, x, &group.nodes) else {
            continue;
        };
        // Every attention sees `[B, Sk, H, D]`: B batches of Sk keys of
        // H·D values, as the slices hold them.
        let keys: usize = parts.iter().map(|(_, [_, rows, _])| rows).sum();
        let fits = attention_dims.iter().all(|&[b, sk, h, d]| {
            sk == keys
                && parts
                    .iter()
                    .all(|&(_, [pb, _, width])| pb == b && width == h * d)
        });
        if fits {
            found.insert(x, parts.into_iter().map(|(rows, _)| rows).collect());
        }
    }
    found
}

/// The v shapes (`[B, Sk, H, D]`) of the fp8 attentions reading `x`, when
/// every reader of `x` (through reshapes) is one of them (as v) or `scale`,
/// there is at least one, and `x` is no graph output.
fn attention_readers(graph: &Graph, x: NodeId, scale: NodeId) -> Option<Vec<[usize; 4]>> {
    if graph
        .outputs()
        .iter()
        .any(|&(_, o)| storage_of(graph, o) == x)
    {
        return None;
    }
    let mut pending = vec![x];
    let mut shapes = Vec::new();
    while let Some(id) = pending.pop() {
        for (user, slot) in graph.users(id) {
            match graph.node(user).op {
                Op::Reshape(_) => pending.push(user),
                Op::ScaledAttention { .. } if slot == 4 => {
                    let &[b, sk, h, d] = graph.ty(id).shape.dims() else {
                        return None;
                    };
                    shapes.push([b, sk, h, d]);
                }
                Op::DynamicScale { .. } if user == scale => {}
                _ => return None,
            }
        }
    }
    (!shapes.is_empty()).then_some(shapes)
}

/// `x` as row sources, each with its slice's `[B, rows, width]`: a slice of
/// a `[B, S, C]` tensor's last axis, or the concatenation along the
/// sequence (axis 1 of `[B, S, H, D]`, each part a reshaped slice with the
/// same batches and keys) of two such slices; `nodes` (the group) must hold
/// nothing else, so the group computes nothing but the copy.
fn row_sources(graph: &Graph, x: NodeId, nodes: &[NodeId]) -> Option<Vec<(VRows, [usize; 3])>> {
    let parts: Vec<NodeId> = match graph.node(x).op {
        Op::Slice { .. } => vec![x],
        Op::Concat { axis: 1 } if graph.ty(x).shape.rank() == 4 => {
            let mut parts = Vec::new();
            for operand in graph.operands(x) {
                let part = storage_of(graph, operand);
                let (seen, sliced) = (graph.ty(operand).shape.dims(), graph.ty(part).shape.dims());
                if sliced.len() != 3 || seen[..2] != sliced[..2] {
                    return None;
                }
                parts.push(part);
            }
            parts
        }
        _ => return None,
    };
    if parts.len() > 2 {
        return None;
    }
    let mut members: Vec<NodeId> = parts.clone();
    if parts != [x] {
        members.push(x);
    }
    members.sort();
    let mut group = nodes.to_vec();
    group.sort();
    if members != group {
        return None;
    }
    parts
        .iter()
        .map(|&p| {
            let &[b, rows, width] = graph.ty(p).shape.dims() else {
                return None;
            };
            Some((slice_rows(graph, p)?, [b, rows, width]))
        })
        .collect()
}

/// A slice of the last axis of a contiguous bf16 `[B, S, C]` tensor as rows.
fn slice_rows(graph: &Graph, slice: NodeId) -> Option<VRows> {
    let Op::Slice { axis, start, end } = graph.node(slice).op else {
        return None;
    };
    let source = storage_of(graph, graph.operands(slice)[0]);
    let &[_, s, c] = graph.ty(source).shape.dims() else {
        return None;
    };
    let aligned = |n: usize| n % ALIGN_ELEMENTS == 0;
    if axis != 2
        || graph.ty(source).dtype != DType::BF16
        || !aligned(start)
        || !aligned(end - start)
        || !aligned(c)
    {
        return None;
    }
    Some(VRows {
        node: source,
        offset: start as u64,
        rows: u32::try_from(s).ok()?,
        row_stride: u32::try_from(c).ok()?,
        batch_stride: u32::try_from(s * c).ok()?,
    })
}
