//! Lowering: the fusion plan's groups, in order, become typed steps over
//! materialized values.
//!
//! - A pointwise, table or reduction group becomes one generated kernel
//!   (`kernels.rs`), except a GroupNorm group, which becomes a statistics
//!   kernel and a normalizing kernel (`group_norm.rs`). An `im2col` (a conv
//!   rewritten by the `conv_im2col` pass) is a pointwise group writing the
//!   patch matrix that the conv's GEMM then reads.
//! - A GEMM group becomes a cuBLASLt matmul that absorbs the linear's bias
//!   and, when the group's first tail op is a GELU of the product, the GELU
//!   (cuBLASLt's `GELU_BIAS` epilogue is the tanh approximation). Any
//!   further tail (gate multiply, residual add) is a pointwise kernel reading
//!   the product: cuBLASLt cannot apply a per-token gate.
//! - An attention group becomes the flash-attention kernel where it applies
//!   (bf16, head width 64 or 128), else the CUDA-core flash kernel (other
//!   dtypes and head widths up to 256). Wider heads (the VAE's mid block:
//!   one head of 512 channels over 16384 pixels at 1024²) are decomposed:
//!   per batch and head, `s = q·kᵀ` as a cuBLASLt GEMM into a score matrix
//!   in the model's dtype, a generated row softmax with the scale folded in
//!   (`softmax.rs`, in place), and `o = p·v` as a second GEMM (cuBLASLt reads
//!   `v` untransposed, so nothing is copied). That materializes the
//!   `seq × seq` scores (512 MiB in bf16 at 1024²); a flash kernel for
//!   d = 512 would avoid it and is the better path later.
//! - A scaled (fp8) attention group becomes two launches
//!   (`attention_fp8.rs`): the V layout kernel, which quantizes the bf16 v
//!   by its scale (reading v where the fused q/k/v projections wrote it
//!   when it is only their slice, `v_rows.rs`) into a key-innermost e4m3
//!   temporary (`vt`, `[batch, heads, head_dim, padded keys]`: Hopper's
//!   fp8 wgmma takes its B operand K-major only, which for `P·V` means keys
//!   innermost, while v is stored head-dim innermost), then the fp8
//!   attention kernel over q, k and vt as tensor maps with the three
//!   per-tensor scales. Head width 128 only (the `fp8_attention` pass
//!   selects nothing else).
//!
//! A value is *materialized* (gets a buffer) when a step reads or writes it
//! outside the kernel that computes it. Reshapes are views: they share their
//! operand's buffer and never appear in steps.

use std::collections::{BTreeMap, HashMap, HashSet};

use fluxc_artifact::AttentionOperands;
use fluxc_ir::{DType, Graph, NodeId, Op, OpClass};
use fluxc_passes::fusion::{FusionPlan, GroupKind};
use fluxc_passes::pipeline::Optimized;

use crate::attention::{
    grid as attention_grid, render_attention, render_simt_attention, AttentionKernel,
    SIMT_MAX_HEAD_DIM,
};
use crate::attention_fp8::{
    attention_fp8_grid, padded_keys, render_attention_fp8, render_v_layout, v_layout_grid,
};
use crate::buffers::{Buf, Temp, TempKind};
use crate::kernels::{self, KernelSource};
use crate::softmax::SoftmaxPlan;
use crate::v_rows::{self, VRows};
use crate::{gated, gemv, group_norm, CodegenError};

/// The dequantization scales of an fp8 GEMM (see [`Op::ScaledLinear`]).
#[derive(Clone, Copy, Debug)]
pub struct GemmScales {
    /// The weight's scale: `[1]`, or `[n, 1]` with `per_row`.
    pub w: NodeId,
    /// The input's scale: `[1]`, or one per row with `per_row`.
    pub x: NodeId,
    /// Per output channel and per row (cuBLASLt's outer-vector mode).
    pub per_row: bool,
}

/// The gated scale and bias of a gated residual a GEMM computes (see
/// `gated.rs`).
#[derive(Clone, Copy, Debug)]
pub struct Gated {
    /// The gated per-channel scale, in place of the weight's.
    pub scale: Temp,
    /// The gated bias, in place of the linear's.
    pub bias: Temp,
}

/// One operand of a [`Product`]: a buffer, an element offset into it and
/// its leading dimension (column-major, as cuBLAS sees it).
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    /// The buffer.
    pub buf: Buf,
    /// Elements into it.
    pub offset: u64,
    /// Leading dimension, in elements.
    pub ld: u64,
}

/// A cuBLASLt matmul over any buffers in cuBLAS's column-major terms:
/// `D (m×n) = op(A) · op(B)` (decomposed attention's products).
#[derive(Clone, Debug)]
pub struct Product {
    /// The node it computes part of (for the report name).
    pub node: NodeId,
    /// What part, in words.
    pub what: String,
    /// `op(A) = Aᵀ`.
    pub trans_a: bool,
    /// `op(B) = Bᵀ`.
    pub trans_b: bool,
    /// Rows of D.
    pub m: u64,
    /// Columns of D.
    pub n: u64,
    /// The reduced dimension.
    pub k: u64,
    /// A.
    pub a: Operand,
    /// B.
    pub b: Operand,
    /// D.
    pub d: Operand,
    /// Element type of A, B and D.
    pub dtype: DType,
}

/// A hand-written kernel's launch (fp8 attention's V layout kernel), copied
/// out of the kernel API's types: what the schedule needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedLaunch {
    /// The `extern "C"` symbol.
    pub name: String,
    /// Its CUDA source (goes into `kernels.cu` once).
    pub source: String,
    /// Grid.
    pub grid: [u32; 3],
    /// Threads per CTA.
    pub threads: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// One gated residual's per-forward scale and bias (a job of a
/// [`PendingStep::GateScale`]).
#[derive(Clone, Copy, Debug)]
pub struct GateJob {
    /// The weight's per-channel scale (f32 `[n, 1]`).
    pub w_scale: NodeId,
    /// The linear's bias (bf16 `[n]`).
    pub bias: NodeId,
    /// The buffer holding the gate and its first element there.
    pub gate: (NodeId, u64),
    /// The gated scale it writes (f32 `[n]`).
    pub scale: Temp,
    /// The gated bias it writes (bf16 `[n]`).
    pub gated_bias: Temp,
    /// Channels.
    pub n: u64,
}

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
        /// Element type of x and w (and of the output, unless `out_dtype`).
        dtype: DType,
        /// Element type of the output of an fp8 GEMM.
        out_dtype: Option<DType>,
        /// The scales of an fp8 GEMM.
        scales: Option<GemmScales>,
        /// A residual folded in (`gated.rs`): C, added with β = 1 (`out`
        /// is then the sum).
        residual: Option<NodeId>,
        /// A gate folded in too: the weight scale and the bias replaced by
        /// the gated ones.
        gated: Option<Gated>,
    },
    /// The per-forward scales and biases of gated residuals (`gated.rs`),
    /// one launch for all of `jobs`.
    GateScale {
        /// The kernel (`kernels/gate_scale.cu`).
        kernel: FixedLaunch,
        /// The residuals, in `blockIdx.y` order.
        jobs: Vec<GateJob>,
    },
    /// A matmul over any buffers.
    Product(Product),
    /// A cuDNN convolution (an im2col GEMM with `cudnn_convolutions`).
    Conv {
        /// The linear it replaces (for the report name).
        node: NodeId,
        /// The image `[n, h, w, c]` the im2col read.
        x: NodeId,
        /// The weight `[k, r·s·c]`.
        w: NodeId,
        /// Bias `[k]`.
        bias: Option<NodeId>,
        /// Output `[n, p, q, k]` (the linear's).
        out: NodeId,
        /// Element type.
        dtype: DType,
        /// `[n, h, w, c]`.
        input: [u32; 4],
        /// `[k, r, s]`.
        filter: [u32; 3],
        /// `[h, w]`.
        padding: [u32; 2],
        /// `[h, w]`.
        stride: [u32; 2],
        /// `[p, q]`.
        output: [u32; 2],
    },
    /// The attention kernel (bf16 or fp8).
    Attention {
        /// The attention node.
        node: NodeId,
        /// Queries, keys (materialized `[B, S, H, D]`).
        q: NodeId,
        /// Keys.
        k: NodeId,
        /// Values: the node (`[B, S, H, D]`), or fp8 attention's
        /// key-innermost copy (the V layout kernel's temporary).
        v: Buf,
        /// fp8 attention's per-tensor scales of q, k and v.
        scales: Option<[NodeId; 3]>,
        /// The kernel.
        kernel: AttentionKernel,
        /// Grid.
        grid: [u32; 3],
        /// `[batch, heads, seq_q, seq_kv, head_dim]`.
        dims: [u32; 5],
        /// Score scale.
        scale: f32,
    },
    /// A linear over one input row (`gemv.rs`): `out = x · wᵀ (+ bias)`,
    /// bf16, or fp8 with its two scales.
    Gemv {
        /// The launch.
        kernel: FixedLaunch,
        /// Input `[k]`.
        x: NodeId,
        /// Weight `[n, k]`.
        w: NodeId,
        /// Bias `[n]`.
        bias: Option<NodeId>,
        /// Output `[n]`.
        out: NodeId,
        /// Output features.
        n: u64,
        /// fp8: the scales of x and of the weight (`[1]`, or `[1]` and
        /// `[n]` per row).
        scales: Option<[NodeId; 2]>,
    },
    /// fp8 attention's V layout kernel: `vt` = v quantized to e4m3 by its
    /// scale, with keys innermost.
    VLayout {
        /// The launch.
        kernel: FixedLaunch,
        /// Where the bf16 values `[B, Sk, H, D]` lie: one or two row
        /// sources, keys in order.
        v: Vec<VRows>,
        /// Their per-tensor scale (f32 `[1]`).
        scale: NodeId,
        /// The key-innermost copy it writes.
        vt: Temp,
        /// Keys.
        seq_kv: u32,
        /// Heads.
        heads: u32,
    },
}

impl PendingStep {
    /// Buffers the step reads.
    pub fn reads(&self) -> Vec<Buf> {
        match self {
            PendingStep::Kernel(k) => k
                .params
                .iter()
                .filter(|p| !p.written)
                .map(|p| p.buf)
                .collect(),
            PendingStep::Gemm {
                x,
                w,
                bias,
                scales,
                residual,
                gated,
                ..
            } => {
                let mut bufs: Vec<Buf> = [Some(*x), Some(*w), scales.map(|s| s.x), *residual]
                    .into_iter()
                    .flatten()
                    .map(Buf::Node)
                    .collect();
                match gated {
                    // The gated scale and bias replace the weight's and the linear's.
                    Some(g) => bufs.extend([Buf::Temp(g.scale), Buf::Temp(g.bias)]),
                    None => bufs.extend(
                        bias.iter()
                            .chain(scales.map(|s| s.w).iter())
                            .copied()
                            .map(Buf::Node),
                    ),
                }
                bufs
            }
            PendingStep::GateScale { jobs, .. } => jobs
                .iter()
                .flat_map(|j| [j.w_scale, j.bias, j.gate.0])
                .map(Buf::Node)
                .collect(),
            PendingStep::Product(p) => vec![p.a.buf, p.b.buf],
            PendingStep::Conv { x, w, bias, .. } => [Some(*x), Some(*w), *bias]
                .into_iter()
                .flatten()
                .map(Buf::Node)
                .collect(),
            PendingStep::Attention {
                q, k, v, scales, ..
            } => {
                let mut bufs = vec![Buf::Node(*q), Buf::Node(*k), *v];
                bufs.extend(scales.iter().flatten().copied().map(Buf::Node));
                bufs
            }
            PendingStep::Gemv {
                x, w, bias, scales, ..
            } => [Some(*x), Some(*w), *bias]
                .into_iter()
                .flatten()
                .chain(scales.iter().flatten().copied())
                .map(Buf::Node)
                .collect(),
            PendingStep::VLayout { v, scale, .. } => v
                .iter()
                .map(|rows| Buf::Node(rows.node))
                .chain([Buf::Node(*scale)])
                .collect(),
        }
    }

    /// Buffers the step writes.
    pub fn writes(&self) -> Vec<Buf> {
        match self {
            PendingStep::Kernel(k) => k
                .params
                .iter()
                .filter(|p| p.written)
                .map(|p| p.buf)
                .collect(),
            PendingStep::Gemm { out, .. } => vec![Buf::Node(*out)],
            PendingStep::GateScale { jobs, .. } => jobs
                .iter()
                .flat_map(|j| [Buf::Temp(j.scale), Buf::Temp(j.gated_bias)])
                .collect(),
            PendingStep::Product(p) => vec![p.d.buf],
            PendingStep::Conv { out, .. } => vec![Buf::Node(*out)],
            PendingStep::Attention { node, .. } => vec![Buf::Node(*node)],
            PendingStep::Gemv { out, .. } => vec![Buf::Node(*out)],
            PendingStep::VLayout { vt, .. } => vec![Buf::Temp(*vt)],
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

/// Lowering choices that are not graph rewrites (from the pass options).
#[derive(Clone, Copy, Debug)]
pub struct Lowering {
    /// The im2col GEMMs as cuDNN convolutions over the image the im2col
    /// reads.
    pub cudnn_convolutions: bool,
    /// GEMMs whose whole tail is a (gated) residual add compute the sum
    /// themselves (`gated.rs`).
    pub residual_in_gemm: bool,
}

impl Lowering {
    /// The choices `optimized` was made with.
    pub fn of(optimized: &Optimized) -> Self {
        Lowering {
            cudnn_convolutions: optimized.cudnn_convolutions,
            residual_in_gemm: optimized.residual_in_gemm,
        }
    }
}

/// Lowers every group of `optimized`'s fusion plan, in order.
pub fn lower(optimized: &Optimized) -> Result<Vec<PendingStep>, CodegenError> {
    let (graph, plan, lowering) = (&optimized.graph, &optimized.fusion, Lowering::of(optimized));
    let fused = fused_tensor_scales(graph, plan, lowering);
    let absorbed: HashSet<usize> = fused.values().map(|&(h, _)| h).collect();
    let in_place_v = v_rows::in_place_values(graph, plan, &fused);
    let mut steps = Vec::new();
    for g in 0..plan.groups.len() {
        if absorbed.contains(&g) {
            continue; // its scale comes from the kernel that stores the tensor
        }
        let scale = fused.get(&g).map(|&(_, scale)| scale);
        let group = GroupLowering {
            g,
            tensor_scale: scale,
            in_place_v: &in_place_v,
        };
        lower_group(graph, plan, group, lowering, &mut steps).map_err(|e| match e {
            CodegenError::Unsupported(what) => CodegenError::Unsupported(format!(
                "{what} (group g{g}, anchor {})",
                describe_node(graph, plan.groups[g].anchor)
            )),
            other => other,
        })?;
    }
    gated::batch(steps).map_err(CodegenError::Unsupported)
}

/// The whole-tensor fp8 scales (groups of one `dynamic_scale`, per tensor)
/// whose tensor a pointwise group stores: pointwise group → (the scale's
/// group, the scale). That kernel computes the scale as it stores the
/// values (`kernels::pointwise_with_tensor_scale`), instead of a second
/// kernel reading them all again.
fn fused_tensor_scales(
    graph: &Graph,
    plan: &FusionPlan,
    lowering: Lowering,
) -> HashMap<usize, (usize, NodeId)> {
    let mut fused = HashMap::new();
    for (h, group) in plan.groups.iter().enumerate() {
        let scale = group.anchor;
        if group.kind != GroupKind::Reduction
            || group.nodes != [scale]
            || !matches!(
                graph.node(scale).op,
                Op::DynamicScale { per_row: false, .. }
            )
        {
            continue;
        }
        let x = storage_of(graph, graph.operands(scale)[0]);
        let Some(g) = plan.group_of(x) else { continue };
        if g >= h || plan.groups[g].kind != GroupKind::Pointwise || fused.contains_key(&g) {
            continue;
        }
        let outputs = plan.group_outputs(graph, g);
        let cudnn = lowering.cudnn_convolutions && outputs.iter().any(|&o| cudnn_patches(graph, o));
        if !cudnn && kernels::can_fuse_tensor_scale(graph, &plan.groups[g].nodes, &outputs, scale) {
            fused.insert(g, (h, scale));
        }
    }
    fused
}

fn describe_node(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    format!("{} @{}", node.op.kind_name(), node.scope)
}

/// One group to lower, with what the plan-wide analyses say about it.
struct GroupLowering<'a> {
    /// The group's index in the plan.
    g: usize,
    /// The whole-tensor scale its kernel computes (`fused_tensor_scales`).
    tensor_scale: Option<NodeId>,
    /// fp8 attention values read where they lie (`v_rows`), by storage node.
    in_place_v: &'a HashMap<NodeId, Vec<VRows>>,
}

fn lower_group(
    graph: &Graph,
    plan: &FusionPlan,
    this: GroupLowering<'_>,
    lowering: Lowering,
    steps: &mut Vec<PendingStep>,
) -> Result<(), CodegenError> {
    let GroupLowering {
        g,
        tensor_scale,
        in_place_v,
    } = this;
    let cudnn = lowering.cudnn_convolutions;
    let group = &plan.groups[g];
    let outputs: Vec<NodeId> = plan.group_outputs(graph, g);
    match group.kind {
        GroupKind::Pointwise if cudnn && outputs.iter().any(|&o| cudnn_patches(graph, o)) => {
            // cuDNN reads the image, so the patches are not written: the
            // kernel stores what the im2col would read (an upsampled image
            // computed here), or nothing is left to do.
            let nodes: Vec<NodeId> = group
                .nodes
                .iter()
                .copied()
                .filter(|&n| !cudnn_patches(graph, n))
                .collect();
            let mut kept: Vec<NodeId> = Vec::new();
            for &o in &outputs {
                let o = if cudnn_patches(graph, o) {
                    storage_of(graph, graph.operands(o)[0])
                } else {
                    o
                };
                if nodes.contains(&o) && !kept.contains(&o) {
                    kept.push(o);
                }
            }
            if !kept.is_empty() {
                steps.push(PendingStep::Kernel(kernels::pointwise(
                    graph, &nodes, &kept,
                )?));
            }
        }
        GroupKind::Pointwise => steps.push(PendingStep::Kernel(match tensor_scale {
            // v read in place by the V layout kernel: only its scale is stored.
            Some(scale) if matches!(outputs.as_slice(), [v] if in_place_v.contains_key(v)) => {
                kernels::pointwise_with_tensor_scale(graph, &group.nodes, &[], scale)?
            }
            Some(scale) => {
                kernels::pointwise_with_tensor_scale(graph, &group.nodes, &outputs, scale)?
            }
            None => kernels::pointwise(graph, &group.nodes, &outputs)?,
        })),
        GroupKind::Table => steps.push(PendingStep::Kernel(kernels::pointwise(
            graph,
            &group.nodes,
            &outputs,
        )?)),
        GroupKind::Reduction
            if matches!(
                graph.node(group.anchor).op,
                Op::DynamicScale { per_row: false, .. }
            ) =>
        {
            steps.push(PendingStep::Kernel(kernels::tensor_scale(
                graph,
                group.anchor,
            )?))
        }
        GroupKind::Reduction if matches!(graph.node(group.anchor).op, Op::GroupNorm { .. }) => {
            steps.extend(group_norm::lower(
                graph,
                &group.nodes,
                &outputs,
                group.anchor,
            )?)
        }
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
        GroupKind::Gemm => {
            lower_gemm(graph, &group.nodes, group.anchor, &outputs, lowering, steps)?
        }
        GroupKind::Attention => steps.extend(lower_attention(graph, group.anchor, in_place_v)?),
    }
    Ok(())
}

/// Whether `id` is an im2col whose patches only feed linears (plain ones,
/// on float values), which cuDNN then runs as convolutions over the image.
fn cudnn_patches(graph: &Graph, id: NodeId) -> bool {
    if !matches!(graph.node(id).op, Op::Im2col { .. }) || graph.ty(id).dtype.is_fp8() {
        return false;
    }
    fn linear_reads(graph: &Graph, id: NodeId, patches: NodeId) -> bool {
        graph
            .users(id)
            .iter()
            .all(|&(u, at)| match graph.node(u).op {
                Op::Reshape(_) => linear_reads(graph, u, patches),
                Op::Linear => at == 0 && storage_of(graph, graph.operands(u)[0]) == patches,
                _ => false,
            })
    }
    !graph.users(id).is_empty() && linear_reads(graph, id, id)
}

fn lower_gemm(
    graph: &Graph,
    nodes: &[NodeId],
    anchor: NodeId,
    outputs: &[NodeId],
    lowering: Lowering,
    steps: &mut Vec<PendingStep>,
) -> Result<(), CodegenError> {
    let node = graph.node(anchor);
    let operands = graph.operands(anchor);
    // Operand positions: linear (x, w, bias?); scaled linear (xq, x_scale,
    // wq, w_scale, bias?).
    let (x_at, w_at, bias_at) = match node.op {
        Op::Linear => (0, 1, 2),
        Op::ScaledLinear { .. } => (0, 2, 4),
        Op::Conv2d { groups, .. } => {
            return Err(CodegenError::Unsupported(format!(
                "conv2d with {groups} groups (the conv_im2col pass rewrites ungrouped convs as \
                 im2col GEMMs)"
            )))
        }
        _ => {
            return Err(CodegenError::Unsupported(format!(
                "{} GEMMs (linear and scaled_linear)",
                node.op.kind_name()
            )))
        }
    };
    let x = storage_of(graph, operands[x_at]);
    let w = operands[w_at];
    if !graph.node(w).op.is_weight() {
        return Err(CodegenError::Unsupported(
            "linear weights computed in the forward".into(),
        ));
    }
    let bias = operands.get(bias_at).copied();
    let operands = [operands[x_at], w];
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
    if lowering.cudnn_convolutions
        && node.op == Op::Linear
        && gelu.is_none()
        && cudnn_patches(graph, x)
    {
        steps.push(conv_step(graph, anchor, x, w, bias)?);
        return tail_kernel(graph, &rest, outputs, steps);
    }
    let (dtype, out_dtype, scales) = match node.op {
        Op::ScaledLinear { out } => {
            // cuBLASLt's fp8 GEMMs add a bf16 or f16 bias only.
            if !matches!(out, DType::BF16 | DType::F16) {
                return Err(CodegenError::Unsupported(format!(
                    "fp8 linears in a {out} model (fp8 GEMMs write bf16 or f16; set the model's \
                     dtype to bf16)"
                )));
            }
            let all = graph.operands(anchor);
            let scales = gemm_scales(graph, storage_of(graph, all[1]), all[3], rows, n)?;
            (graph.ty(x).dtype, Some(out), Some(scales))
        }
        _ => (node.ty.dtype, None, None),
    };
    let bf16 = |id: NodeId| graph.ty(id).dtype == DType::BF16;
    let e4m3 = |id: NodeId| graph.ty(id).dtype == DType::F8E4M3;
    // A one-row fp8 linear (FLUX's modulation product under the fp8
    // policy's `one_row`): fluxc's fp8 GEMV.
    let fp8_gemv = match (scales, out_dtype) {
        (Some(sc), Some(DType::BF16))
            if rows == 1
                && gelu.is_none()
                && gemv::supports_fp8(k)
                && e4m3(x)
                && e4m3(w)
                && bias.is_none_or(bf16) =>
        {
            Some(sc)
        }
        _ => None,
    };
    // Otherwise a one-row bf16 linear: the bf16 GEMV.
    let gemv = if let Some(sc) = fp8_gemv {
        Some((
            gemv::render_fp8(k, n, bias.is_some(), sc.per_row),
            Some([sc.x, sc.w]),
        ))
    } else if node.op == Op::Linear
        && rows == 1
        && gelu.is_none()
        && gemv::supports(k)
        && [x, w, anchor].into_iter().chain(bias).all(bf16)
    {
        Some((gemv::render(k, n, bias.is_some()), None))
    } else {
        None
    };
    if let Some((kernel, scales)) = gemv {
        steps.push(PendingStep::Gemv {
            kernel: kernel.map_err(CodegenError::Unsupported)?,
            x,
            w,
            bias,
            out: anchor,
            n,
            scales,
        });
    } else {
        let tail_outputs: Vec<NodeId> = outputs
            .iter()
            .copied()
            .filter(|o| rest.contains(o))
            .collect();
        // The GEMM step writing `out`, with the GELU epilogue or a folded
        // (gated) residual.
        let gemm = |out, gelu, residual, gated| PendingStep::Gemm {
            node: anchor,
            x,
            w,
            bias,
            out,
            gelu,
            rows,
            k,
            n,
            dtype,
            out_dtype,
            scales,
            residual,
            gated,
        };
        // A GEMM whose whole tail is a residual add takes the residual as
        // its C (`gated.rs`).
        if lowering.residual_in_gemm && gelu.is_none() && !outputs.contains(&anchor) {
            if let Some((sum, residual)) = gated::find_residual(graph, anchor, &rest, &tail_outputs)
            {
                steps.push(gemm(sum, false, Some(residual), None));
                return Ok(());
            }
        }
        // An fp8 GEMM with per-row scales and a bias whose whole tail is a
        // gated residual computes the sum itself (`gated.rs`).
        let folded = match (scales, bias, gelu) {
            (Some(sc), Some(b), None)
                if lowering.residual_in_gemm && sc.per_row && !outputs.contains(&anchor) =>
            {
                gated::find(graph, anchor, &rest, &tail_outputs, n).map(|g| (sc, b, g))
            }
            _ => None,
        };
        if let Some((sc, b, g)) = folded {
            let temp = |what, dtype| Temp {
                of: g.sum,
                what,
                dtype,
                elements: n,
            };
            let (scale, gated_bias) = (
                temp(TempKind::GatedScale, DType::F32),
                temp(TempKind::GatedBias, DType::BF16),
            );
            steps.push(PendingStep::GateScale {
                kernel: gated::render(&[n]).map_err(CodegenError::Unsupported)?,
                jobs: vec![GateJob {
                    w_scale: sc.w,
                    bias: b,
                    gate: g.gate,
                    scale,
                    gated_bias,
                    n,
                }],
            });
            let gated = Gated {
                scale,
                bias: gated_bias,
            };
            steps.push(gemm(g.sum, false, Some(g.residual), Some(gated)));
            return Ok(());
        }
        steps.push(gemm(product, gelu.is_some(), None, None));
    }
    tail_kernel(graph, &rest, outputs, steps)
}

/// The pointwise kernel of a GEMM's (or convolution's) tail `rest`, if any.
fn tail_kernel(
    graph: &Graph,
    rest: &[NodeId],
    outputs: &[NodeId],
    steps: &mut Vec<PendingStep>,
) -> Result<(), CodegenError> {
    if !rest.is_empty() {
        let tail_outputs: Vec<NodeId> = outputs
            .iter()
            .copied()
            .filter(|o| rest.contains(o))
            .collect();
        steps.push(PendingStep::Kernel(kernels::pointwise(
            graph,
            rest,
            &tail_outputs,
        )?));
    }
    Ok(())
}

/// The cuDNN convolution that `linear(im2col(image), w, bias)` is: the
/// image the im2col reads, the weight as the linear has it (`[k, r·s·c]`,
/// cuDNN's NHWC filter layout), the output the linear writes.
fn conv_step(
    graph: &Graph,
    linear: NodeId,
    patches: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
) -> Result<PendingStep, CodegenError> {
    let Op::Im2col {
        kernel,
        stride,
        padding,
    } = graph.node(patches).op
    else {
        return Err(CodegenError::Invalid(
            "a convolution without an im2col".into(),
        ));
    };
    let image = storage_of(graph, graph.operands(patches)[0]);
    let u32s = |v: &[usize]| -> Result<Vec<u32>, CodegenError> {
        v.iter()
            .map(|&d| {
                u32::try_from(d)
                    .map_err(|_| CodegenError::TooLarge(format!("a convolution size {d}")))
            })
            .collect()
    };
    let input = u32s(graph.ty(graph.operands(patches)[0]).shape.dims())?;
    let output = u32s(graph.ty(patches).shape.dims())?;
    let k = u32s(&[graph.ty(w).shape.dims()[0]])?[0];
    let [kh, kw] = [kernel[0], kernel[1]];
    let geometry = u32s(&[kh, kw, padding[0], padding[1], stride[0], stride[1]])?;
    Ok(PendingStep::Conv {
        node: linear,
        x: image,
        w,
        bias,
        out: linear,
        dtype: graph.ty(linear).dtype,
        input: [input[0], input[1], input[2], input[3]],
        filter: [k, geometry[0], geometry[1]],
        padding: [geometry[2], geometry[3]],
        stride: [geometry[4], geometry[5]],
        output: [output[1], output[2]],
    })
}

/// The scales of a scaled linear with `rows` input rows and `n` outputs:
/// both per tensor, or one per input row and one per output channel.
fn gemm_scales(
    graph: &Graph,
    x_scale: NodeId,
    w_scale: NodeId,
    rows: u64,
    n: u64,
) -> Result<GemmScales, CodegenError> {
    if !graph.node(w_scale).op.is_weight() {
        return Err(CodegenError::Unsupported(
            "fp8 weight scales computed in the forward".into(),
        ));
    }
    let count = |id: NodeId| graph.ty(id).shape.numel() as u64;
    match (count(x_scale), count(w_scale)) {
        (1, 1) if rows > 1 || n > 1 => Ok(GemmScales {
            w: w_scale,
            x: x_scale,
            per_row: false,
        }),
        (xs, ws) if xs == rows && ws == n => Ok(GemmScales {
            w: w_scale,
            x: x_scale,
            per_row: true,
        }),
        (xs, ws) => Err(CodegenError::Unsupported(format!(
            "fp8 GEMM scales with {xs} input and {ws} weight values for {rows} rows and {n} \
             outputs (both per tensor, or per row and per output channel)"
        ))),
    }
}

fn lower_attention(
    graph: &Graph,
    node: NodeId,
    in_place_v: &HashMap<NodeId, Vec<VRows>>,
) -> Result<Vec<PendingStep>, CodegenError> {
    let scale = match graph.node(node).op {
        Op::Attention { scale } => scale,
        Op::ScaledAttention { scale } => {
            return lower_scaled_attention(graph, node, scale.get(), in_place_v)
        }
        _ => {
            return Err(CodegenError::Invalid(
                "attention group without attention".into(),
            ))
        }
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
    // The tensor-core kernel where it applies; the CUDA-core flash kernel
    // for other dtypes and head widths up to 256; decomposed (scores
    // materialized in the model's dtype) beyond, e.g. the VAE's 512-wide
    // head.
    let dtype = graph.ty(operands[0]).dtype;
    let kernel = match (dtype, render_attention(qd[3])) {
        (DType::BF16, Ok(kernel)) => kernel,
        _ if qd[3] <= SIMT_MAX_HEAD_DIM => {
            render_simt_attention(qd[3], kernels::c_type(dtype)?, dtype.name())
                .map_err(CodegenError::Unsupported)?
        }
        _ => {
            let dims = [qd[0], qd[2], qd[1], kd[1], qd[3]];
            return decomposed_attention(graph, node, [q, k, v], dims, scale.get());
        }
    };
    let dims = dims_u32([qd[0], qd[2], qd[1], kd[1], qd[3]])?;
    let grid = attention_grid(&kernel, dims[0], dims[1], dims[2]);
    Ok(vec![PendingStep::Attention {
        node,
        q,
        k,
        v: Buf::Node(v),
        scales: None,
        kernel,
        grid,
        dims,
        scale: scale.get(),
    }])
}

/// `dims` as `u32`s, or [`CodegenError::TooLarge`] naming the one that
/// does not fit.
fn dims_u32<const N: usize>(dims: [usize; N]) -> Result<[u32; N], CodegenError> {
    let mut out = [0u32; N];
    for (o, &d) in out.iter_mut().zip(&dims) {
        *o = u32::try_from(d).map_err(|_| CodegenError::TooLarge(format!("attention dim {d}")))?;
    }
    Ok(out)
}

/// A scaled (fp8) attention as the V layout launch and the fp8 attention
/// launch (see the module docs), with the `vt` temporary between them. The
/// V layout kernel reads v's rows where `in_place_v` says they lie, or from
/// v's own buffer.
fn lower_scaled_attention(
    graph: &Graph,
    node: NodeId,
    scale: f32,
    in_place_v: &HashMap<NodeId, Vec<VRows>>,
) -> Result<Vec<PendingStep>, CodegenError> {
    let operands = graph.operands(node);
    let operands = <[NodeId; 6]>::try_from(operands.as_slice()).map_err(|_| {
        CodegenError::Invalid(format!("scaled attention with {} operands", operands.len()))
    })?;
    // Shapes from the operands as the op sees them (`[B, S, H, D]`), buffers
    // from what holds their elements (v is often a reshaped slice).
    let dims = |id: NodeId| -> [usize; 4] {
        let d = graph.ty(id).shape.dims();
        [d[0], d[1], d[2], d[3]]
    };
    let ([b, sq, h, d], [_, sk, _, _], [_, _, _, dv]) =
        (dims(operands[0]), dims(operands[2]), dims(operands[4]));
    let [q8, qs, k8, ks, v, vs] = operands.map(|o| storage_of(graph, o));
    if graph.ty(v).dtype != DType::BF16 {
        return Err(CodegenError::Unsupported(format!(
            "fp8 attention over {} values (the V layout kernel reads bf16)",
            graph.ty(v).dtype
        )));
    }
    if dv != d {
        return Err(CodegenError::Unsupported(
            "fp8 attention with a value width other than the head width".into(),
        ));
    }
    let kernel = render_attention_fp8(d).map_err(CodegenError::Unsupported)?;
    let v_kernel = render_v_layout(d).map_err(CodegenError::Unsupported)?;
    let [batch, heads, seq_q, seq_kv, head_dim] = dims_u32([b, h, sq, sk, d])?;
    let vt_keys = padded_keys(seq_kv);
    let v_rows = match in_place_v.get(&v) {
        Some(rows) => rows.clone(),
        None => vec![VRows::contiguous(v, [b, sk, h, d])
            .ok_or_else(|| CodegenError::TooLarge(format!("fp8 attention's v {}", graph.ty(v))))?],
    };
    let vt = Temp {
        of: node,
        what: TempKind::VTransposed,
        dtype: DType::F8E4M3,
        elements: u64::from(batch) * u64::from(heads) * u64::from(head_dim) * u64::from(vt_keys),
    };
    Ok(vec![
        PendingStep::VLayout {
            kernel: FixedLaunch {
                grid: v_layout_grid(batch, heads, seq_kv),
                name: v_kernel.name,
                source: v_kernel.source,
                threads: v_kernel.threads,
                shared_bytes: 0,
            },
            v: v_rows,
            scale: vs,
            vt,
            seq_kv,
            heads,
        },
        PendingStep::Attention {
            node,
            q: q8,
            k: k8,
            v: Buf::Temp(vt),
            scales: Some([qs, ks, vs]),
            grid: attention_fp8_grid(&kernel, batch, heads, seq_q),
            kernel: AttentionKernel {
                operands: AttentionOperands::Fp8TensorMaps {
                    q_rows: kernel.block_m,
                    kv_rows: kernel.block_n,
                    vt_rows: kernel.vt_box_keys,
                    vt_keys,
                },
                name: kernel.name,
                source: kernel.source,
                block_m: kernel.block_m,
                threads: kernel.threads,
                shared_bytes: kernel.shared_bytes,
                split: Some(kernel.split),
            },
            dims: [batch, heads, seq_q, seq_kv, head_dim],
            scale,
        },
    ])
}

/// Attention `node` over `[q, k, v]` (contiguous `[B, S, H, D]`) with
/// `dims = [batch, heads, seq_q, seq_kv, head_dim]` as GEMMs and a softmax:
/// for each batch and head, `s = q·kᵀ` into the scores (row-major `[seq_q,
/// seq_kv]`, the model's dtype), the scaled row softmax over all of them,
/// then `o = p·v` into the attention's output. Heads are strided views
/// (leading dimension `H·D`), so nothing is copied.
fn decomposed_attention(
    graph: &Graph,
    node: NodeId,
    [q, k, v]: [NodeId; 3],
    dims: [usize; 5],
    scale: f32,
) -> Result<Vec<PendingStep>, CodegenError> {
    let [batch, heads, sq, sk, d] = dims.map(|x| x as u64);
    let dtype = graph.ty(node).dtype;
    // Each head's scores start on a 256-byte boundary (cuBLASLt's default
    // alignment assumption).
    let per_256 = 256 / dtype.size_bytes() as u64;
    let stride = (sq * sk).div_ceil(per_256) * per_256;
    let scores = Temp {
        of: node,
        what: TempKind::Scores,
        dtype,
        elements: batch * heads * stride,
    };
    let operand = |id: NodeId, seq: u64, b: u64, h: u64| Operand {
        buf: Buf::Node(id),
        offset: (b * seq * heads + h) * d,
        ld: heads * d,
    };
    let score_block = |bh: u64| Operand {
        buf: Buf::Temp(scores),
        offset: bh * stride,
        ld: sk,
    };
    let head = |b: u64, h: u64| {
        if batch * heads == 1 {
            String::new()
        } else {
            format!(", batch {b} head {h}")
        }
    };
    let mut products = Vec::new();
    let mut outputs = Vec::new();
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            // Column-major: scores are sk × sq = (k as stored, d × sk)ᵀ · (q, d × sq).
            products.push(PendingStep::Product(Product {
                node,
                what: format!("scores = q·kᵀ{}", head(b, h)),
                trans_a: true,
                trans_b: false,
                m: sk,
                n: sq,
                k: d,
                a: operand(k, sk, b, h),
                b: operand(q, sq, b, h),
                d: score_block(bh),
                dtype,
            }));
            // Column-major: o is d × sq = (v, d × sk) · (p, sk × sq).
            outputs.push(PendingStep::Product(Product {
                node,
                what: format!("o = p·v{}", head(b, h)),
                trans_a: false,
                trans_b: false,
                m: d,
                n: sq,
                k: sk,
                a: operand(v, sk, b, h),
                b: score_block(bh),
                d: operand(node, sq, b, h),
                dtype,
            }));
        }
    }
    let softmax = SoftmaxPlan {
        node,
        scores,
        matrices: (batch * heads) as usize,
        stride: stride as usize,
        rows: sq as usize,
        cols: sk as usize,
        scale,
    };
    products.push(PendingStep::Kernel(crate::softmax::scaled_softmax(
        graph, &softmax, None,
    )?));
    products.extend(outputs);
    Ok(products)
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
    // The type of the largest output (the fp8 values, not their scales).
    let dtype = k
        .params
        .iter()
        .filter(|p| p.written)
        .max_by_key(|p| p.buf.elements(graph))
        .map(|p| p.buf.dtype(graph).name())
        .unwrap_or("f32");
    format!("k{n}_{}_{dtype}", ops.join("_"))
}

/// Every buffer some step reads or writes, plus graph inputs and outputs.
pub fn materialized(graph: &Graph, steps: &[PendingStep]) -> Vec<Buf> {
    let mut seen = HashSet::new();
    let mut values = Vec::new();
    let mut add = |b: Buf| {
        if seen.insert(b) {
            values.push(b);
        }
    };
    let live = graph.live_nodes();
    for id in graph.inputs() {
        if live.contains(&id) {
            add(Buf::Node(id));
        }
    }
    for step in steps {
        for b in step.reads().into_iter().chain(step.writes()) {
            add(b);
        }
    }
    for (_, out) in graph.outputs() {
        add(Buf::Node(storage_of(graph, *out)));
    }
    values
}
