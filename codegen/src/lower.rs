//! Lowering: the fusion plan's groups, in order, become typed steps over
//! materialized values.
//!
//! - A pointwise, table or reduction group becomes one generated kernel
//!   (`kernels.rs`).
//! - A GEMM group becomes a cuBLASLt matmul that absorbs the linear's bias
//!   and, when the group's first tail op is a GELU of the product, the GELU
//!   (cuBLASLt's `GELU_BIAS` epilogue is the tanh approximation). Any
//!   further tail (gate multiply, residual add) is a pointwise kernel reading
//!   the product: cuBLASLt cannot apply a per-token gate.
//! - An attention group becomes the flash-attention kernel.
//!
//! A value is *materialized* (gets a buffer) when a step reads or writes it
//! outside the kernel that computes it. Reshapes are views: they share their
//! operand's buffer and never appear in steps.

use std::collections::{BTreeMap, HashMap, HashSet};

use fluxc_ir::{DType, Graph, NodeId, Op, OpClass};
use fluxc_passes::fusion::{FusionPlan, GroupKind};

use crate::attention::{
    grid as attention_grid, render_attention, render_simt_attention, AttentionKernel,
};
use crate::kernels::{self, KernelSource};
use crate::CodegenError;

/// A step over graph values, before buffers have offsets.
#[derive(Clone, Debug)]
pub enum PendingStep {
    /// A generated kernel (named later, when identical ones are merged).
    Kernel(KernelSource),
    /// A cuBLASLt matmul: `out = epilogue(x · wᵀ + bias)`.
    Gemm {
        /// The linear node (for the report name).
        node: NodeId,
        /// Input `[rows, k]` (a materialized value).
        x: NodeId,
        /// Weight `[n, k]`.
        w: NodeId,
        /// Bias `[n]`.
        bias: Option<NodeId>,
        /// Output `[rows, n]`.
        out: NodeId,
        /// Whether cuBLASLt applies GELU (tanh) after the bias.
        gelu: bool,
        /// Rows.
        rows: u64,
        /// Input features.
        k: u64,
        /// Output features.
        n: u64,
        /// Element type.
        dtype: DType,
    },
    /// The attention kernel.
    Attention {
        /// The attention node.
        node: NodeId,
        /// Queries, keys, values (materialized `[B, S, H, D]`).
        q: NodeId,
        /// Keys.
        k: NodeId,
        /// Values.
        v: NodeId,
        /// The kernel.
        kernel: AttentionKernel,
        /// Grid.
        grid: [u32; 3],
        /// `[batch, heads, seq_q, seq_kv, head_dim]`.
        dims: [u32; 5],
        /// Score scale.
        scale: f32,
    },
}

impl PendingStep {
    /// Materialized values the step reads.
    pub fn reads(&self) -> Vec<NodeId> {
        match self {
            PendingStep::Kernel(k) => k
                .params
                .iter()
                .filter(|p| !p.written)
                .map(|p| p.node)
                .collect(),
            PendingStep::Gemm { x, w, bias, .. } => {
                [Some(*x), Some(*w), *bias].into_iter().flatten().collect()
            }
            PendingStep::Attention { q, k, v, .. } => vec![*q, *k, *v],
        }
    }

    /// Materialized values the step writes.
    pub fn writes(&self) -> Vec<NodeId> {
        match self {
            PendingStep::Kernel(k) => k
                .params
                .iter()
                .filter(|p| p.written)
                .map(|p| p.node)
                .collect(),
            PendingStep::Gemm { out, .. } => vec![*out],
            PendingStep::Attention { node, .. } => vec![*node],
        }
    }
}

/// The node whose buffer holds `id`'s elements: `id` itself, or the source
/// of a chain of reshapes.
pub fn storage_of(graph: &Graph, mut id: NodeId) -> NodeId {
    while let Op::Reshape(_) = graph.node(id).op {
        id = graph.operands(id)[0];
    }
    id
}

/// Lowers every group of `plan`, in order.
pub fn lower(graph: &Graph, plan: &FusionPlan) -> Result<Vec<PendingStep>, CodegenError> {
    let mut steps = Vec::new();
    for g in 0..plan.groups.len() {
        lower_group(graph, plan, g, &mut steps).map_err(|e| match e {
            CodegenError::Unsupported(what) => CodegenError::Unsupported(format!(
                "{what} (group g{g}, anchor {})",
                describe_node(graph, plan.groups[g].anchor)
            )),
            other => other,
        })?;
    }
    Ok(steps)
}

fn describe_node(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    format!("{} @{}", node.op.kind_name(), node.scope)
}

fn lower_group(
    graph: &Graph,
    plan: &FusionPlan,
    g: usize,
    steps: &mut Vec<PendingStep>,
) -> Result<(), CodegenError> {
    let group = &plan.groups[g];
    let outputs: Vec<NodeId> = plan.group_outputs(graph, g);
    match group.kind {
        GroupKind::Pointwise | GroupKind::Table => steps.push(PendingStep::Kernel(
            kernels::pointwise(graph, &group.nodes, &outputs)?,
        )),
        GroupKind::Reduction => {
            let reduction = group
                .nodes
                .iter()
                .copied()
                .find(|&n| graph.node(n).op.class() == OpClass::Reduction)
                .ok_or_else(|| {
                    CodegenError::Invalid(format!("reduction group {g} has no reduction"))
                })?;
            steps.push(PendingStep::Kernel(kernels::row(
                graph,
                &group.nodes,
                &outputs,
                reduction,
            )?));
        }
        GroupKind::Gemm => lower_gemm(graph, &group.nodes, group.anchor, &outputs, steps)?,
        GroupKind::Attention => steps.push(lower_attention(graph, group.anchor)?),
    }
    Ok(())
}

fn lower_gemm(
    graph: &Graph,
    nodes: &[NodeId],
    anchor: NodeId,
    outputs: &[NodeId],
    steps: &mut Vec<PendingStep>,
) -> Result<(), CodegenError> {
    let node = graph.node(anchor);
    if node.op != Op::Linear {
        return Err(CodegenError::Unsupported(format!(
            "{} GEMMs (only linear so far; conv and fp8 GEMMs come with their issues)",
            node.op.kind_name()
        )));
    }
    let operands = graph.operands(anchor);
    let x = storage_of(graph, operands[0]);
    let w = operands[1];
    if !graph.node(w).op.is_weight() {
        return Err(CodegenError::Unsupported(
            "linear weights computed in the forward".into(),
        ));
    }
    let bias = operands.get(2).copied();
    let x_dims = graph.ty(operands[0]).shape.dims();
    let k = *x_dims.last().unwrap_or(&1) as u64;
    let n = graph.ty(w).shape.dims()[0] as u64;
    let rows = graph.ty(operands[0]).shape.numel() as u64 / k.max(1);

    // The tail after the product; a GELU reading only the product and the
    // first in line goes into cuBLASLt's epilogue (with a bias).
    let tail: Vec<NodeId> = nodes.iter().copied().filter(|&id| id != anchor).collect();
    let gelu = tail.first().copied().filter(|&t| {
        bias.is_some()
            && graph.node(t).op == Op::Unary(fluxc_ir::UnaryOp::GeluTanh)
            && graph.operands(t) == [anchor]
            && !outputs.contains(&anchor)
            && graph.users(anchor).len() == 1
    });
    let product = gelu.unwrap_or(anchor);
    let rest: Vec<NodeId> = tail.into_iter().filter(|&t| Some(t) != gelu).collect();
    steps.push(PendingStep::Gemm {
        node: anchor,
        x,
        w,
        bias,
        out: product,
        gelu: gelu.is_some(),
        rows,
        k,
        n,
        dtype: node.ty.dtype,
    });
    if !rest.is_empty() {
        let tail_outputs: Vec<NodeId> = outputs
            .iter()
            .copied()
            .filter(|o| rest.contains(o))
            .collect();
        steps.push(PendingStep::Kernel(kernels::pointwise(
            graph,
            &rest,
            &tail_outputs,
        )?));
    }
    Ok(())
}

fn lower_attention(graph: &Graph, node: NodeId) -> Result<PendingStep, CodegenError> {
    let Op::Attention { scale } = graph.node(node).op else {
        return Err(CodegenError::Invalid(
            "attention group without attention".into(),
        ));
    };
    let operands = graph.operands(node);
    let (q, k, v) = (
        storage_of(graph, operands[0]),
        storage_of(graph, operands[1]),
        storage_of(graph, operands[2]),
    );
    let qd = graph.ty(operands[0]).shape.dims().to_vec();
    let kd = graph.ty(operands[1]).shape.dims().to_vec();
    let vd = graph.ty(operands[2]).shape.dims().to_vec();
    if vd[3] != qd[3] {
        return Err(CodegenError::Unsupported(
            "attention with a value width other than the head width".into(),
        ));
    }
    // The tensor-core kernel where it applies, the CUDA-core one elsewhere.
    let dtype = graph.ty(operands[0]).dtype;
    let kernel = match (dtype, render_attention(qd[3])) {
        (DType::BF16, Ok(kernel)) => kernel,
        _ => render_simt_attention(qd[3], kernels::c_type(dtype)?, dtype.name())
            .map_err(CodegenError::Unsupported)?,
    };
    let to_u32 = |v: usize| {
        u32::try_from(v).map_err(|_| CodegenError::TooLarge(format!("attention dim {v}")))
    };
    let dims = [
        to_u32(qd[0])?,
        to_u32(qd[2])?,
        to_u32(qd[1])?,
        to_u32(kd[1])?,
        to_u32(qd[3])?,
    ];
    let grid = attention_grid(&kernel, dims[0], dims[1], dims[2]);
    Ok(PendingStep::Attention {
        node,
        q,
        k,
        v,
        kernel,
        grid,
        dims,
        scale: scale.get(),
    })
}

/// Identical kernels (every transformer block has the same ones) merged and
/// named in order of first use: `k{n}_{ops}_{dtype}`.
pub fn name_kernels(
    graph: &Graph,
    steps: &[PendingStep],
) -> (Vec<String>, BTreeMap<usize, String>) {
    let mut by_source: HashMap<&str, String> = HashMap::new();
    let mut unique: Vec<String> = Vec::new();
    let mut names = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        let PendingStep::Kernel(k) = step else {
            continue;
        };
        let name = by_source
            .entry(k.source.as_str())
            .or_insert_with(|| {
                let n = unique.len();
                let name = kernel_name(graph, n, k);
                unique.push(k.source.replace(kernels::NAME, &name));
                name
            })
            .clone();
        names.insert(i, name);
    }
    (unique, names)
}

fn kernel_name(graph: &Graph, n: usize, k: &KernelSource) -> String {
    let ops: Vec<&str> = k.ops.iter().copied().take(4).collect();
    let dtype = k
        .params
        .iter()
        .find(|p| p.written)
        .map(|p| graph.ty(p.node).dtype.name())
        .unwrap_or("f32");
    format!("k{n}_{}_{dtype}", ops.join("_"))
}

/// Every value some step reads or writes, plus graph inputs and outputs.
pub fn materialized(graph: &Graph, steps: &[PendingStep]) -> Vec<NodeId> {
    let mut seen = HashSet::new();
    let mut values = Vec::new();
    let mut add = |id: NodeId| {
        if seen.insert(id) {
            values.push(id);
        }
    };
    let live = graph.live_nodes();
    for id in graph.inputs() {
        if live.contains(&id) {
            add(id);
        }
    }
    for step in steps {
        for id in step.reads().into_iter().chain(step.writes()) {
            add(id);
        }
    }
    for (_, out) in graph.outputs() {
        add(storage_of(graph, *out));
    }
    values
}
