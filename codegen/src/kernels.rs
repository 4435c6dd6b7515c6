//! Kernel templates: a fused group of IR nodes becomes one CUDA kernel.
//!
//! Two shapes of kernel cover every memory-bound group:
//!
//! - **pointwise**: one thread per element of the group's iteration space;
//!   each output's value at that element is pulled through the emitter.
//! - **row**: a reduction (LayerNorm, RMSNorm, softmax) over the last axis
//!   with its pointwise prologue and epilogue. `tpr` threads share a row,
//!   each holding `ept` elements in registers (element `c = lane + e·tpr`,
//!   so loads are coalesced); the prologue runs once into registers, the row
//!   statistics are reduced by warp shuffles (and shared memory when a row
//!   spans warps), then the epilogue runs from registers and stores.
//!
//! All arithmetic is f32; storage converts at loads and stores. Kernels are
//! rendered with the placeholder `{{NAME}}` for their name, so identical
//! groups (every block of the model has the same ones) share one kernel.

use std::collections::HashSet;

use fluxc_ir::{DType, Graph, NodeId, Op, MIN_AMAX};

use crate::buffers::{Buf, Temp};
use crate::emit::{float_literal, Emitter, Index, Param};
use crate::{group_norm, softmax, CodegenError};

/// Threads per block of a generated kernel unless tuned otherwise.
pub const BLOCK_THREADS: u32 = 256;

/// How a generated kernel is launched: the part of its shape the autotuner
/// may change (`launch.rs` declares the spaces). The kernel computes the
/// same values under every valid configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LaunchConfig {
    /// Threads per block.
    pub block_threads: u32,
    /// Threads sharing one row (row kernels; 0 for the other kinds).
    pub threads_per_row: u32,
}

/// What a kernel computes, kept so that it can be rendered again under
/// another [`LaunchConfig`].
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// [`pointwise`] over `nodes`, writing `outputs` (and, with
    /// `tensor_scale`, that whole-tensor fp8 scale of one of them, or of a
    /// value it computes but does not store:
    /// [`pointwise_with_tensor_scale`]).
    Pointwise {
        /// The group's nodes.
        nodes: Vec<NodeId>,
        /// What it writes.
        outputs: Vec<NodeId>,
        /// A `dynamic_scale` (per tensor) of one of `outputs`, or (with no
        /// outputs) of a value of `nodes`.
        tensor_scale: Option<NodeId>,
    },
    /// [`row`] over `nodes` around `reduction`.
    Row {
        /// The group's nodes.
        nodes: Vec<NodeId>,
        /// What it writes.
        outputs: Vec<NodeId>,
        /// The (first) reduction.
        reduction: NodeId,
    },
    /// [`tensor_scale`] of `node`.
    TensorScale {
        /// The whole-tensor `DynamicScale`.
        node: NodeId,
    },
    /// GroupNorm's statistics kernel ([`group_norm::stats`]).
    GroupStats(group_norm::GroupNormPlan),
    /// GroupNorm's normalizing kernel ([`group_norm::apply`]).
    GroupNormApply(group_norm::GroupNormPlan),
    /// Decomposed attention's row softmax ([`softmax::scaled_softmax`]).
    ScaledSoftmax(softmax::SoftmaxPlan),
}

/// Renders `recipe` under `config` (its default configuration when
/// `None`). An invalid configuration is [`CodegenError::Unsupported`].
pub fn render(
    graph: &Graph,
    recipe: &Recipe,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    match recipe {
        Recipe::Pointwise {
            nodes,
            outputs,
            tensor_scale,
        } => {
            let recipe = recipe.clone();
            pointwise_kernel(graph, nodes, outputs, config, recipe, &[], *tensor_scale)
        }
        Recipe::Row {
            nodes,
            outputs,
            reduction,
        } => row_with(graph, nodes, outputs, *reduction, config),
        Recipe::TensorScale { node } => tensor_scale_with(graph, *node, config),
        Recipe::GroupStats(plan) => group_norm::stats(graph, plan, config),
        Recipe::GroupNormApply(plan) => group_norm::apply(graph, plan, config),
        Recipe::ScaledSoftmax(plan) => softmax::scaled_softmax(graph, plan, config),
    }
}

/// Checks a block size: a whole number of warps, at most 1024 threads.
pub(crate) fn check_block(block: u32) -> Result<(), CodegenError> {
    if block == 0 || block % 32 != 0 || block > 1024 {
        return Err(CodegenError::Unsupported(format!(
            "a block of {block} threads (a multiple of 32, at most 1024)"
        )));
    }
    Ok(())
}

/// Placeholder for the kernel name in rendered sources.
pub const NAME: &str = "{{NAME}}";

/// A rendered kernel, before it is named.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSource {
    /// The source with `NAME` in place of the name.
    pub source: String,
    /// Its parameters, in declaration order.
    pub params: Vec<Param>,
    /// Grid size.
    pub grid: [u32; 3],
    /// Block size.
    pub block: [u32; 3],
    /// Op kinds it computes, in order (for its name).
    pub ops: Vec<&'static str>,
    /// 32-bit words of zero-initialized scratch the kernel takes as its last
    /// parameter (`unsigned int* s0`), one allocation per launch; 0 for none.
    pub scratch_words: u32,
    /// The launch configuration it was rendered with.
    pub config: LaunchConfig,
    /// What it computes (to render it again under another configuration).
    pub recipe: Recipe,
}

/// A pointwise kernel computing `nodes` and writing `outputs`, one thread
/// per element of `outputs[0]`'s shape (all outputs have that many elements).
pub fn pointwise(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
) -> Result<KernelSource, CodegenError> {
    pointwise_with(graph, nodes, outputs, None)
}

/// [`pointwise`] in blocks of `config`'s threads (256 by default).
pub fn pointwise_with(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    let recipe = Recipe::Pointwise {
        nodes: nodes.to_vec(),
        outputs: outputs.to_vec(),
        tensor_scale: None,
    };
    pointwise_kernel(graph, nodes, outputs, config, recipe, &[], None)
}

/// [`pointwise`] that also computes `scale`, a whole-tensor `dynamic_scale`
/// of one of `outputs`, from the values it stores: each thread's absmax,
/// the block's, then across blocks with atomics, the last block to finish
/// writing the scale (as [`tensor_scale`] does, whose launch and second
/// read of the tensor this saves). The quantization's producer computes
/// its absmax, with no host sync. With no `outputs` the kernel computes
/// the scaled value of `nodes` and stores only its scale: the value is
/// read where it lies by whatever uses it (fp8 attention's v, a slice of
/// the fused q/k/v projection's output). Fails unless
/// [`can_fuse_tensor_scale`].
pub fn pointwise_with_tensor_scale(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    scale: NodeId,
) -> Result<KernelSource, CodegenError> {
    let recipe = Recipe::Pointwise {
        nodes: nodes.to_vec(),
        outputs: outputs.to_vec(),
        tensor_scale: Some(scale),
    };
    pointwise_kernel(graph, nodes, outputs, None, recipe, &[], Some(scale))
}

/// Whether a pointwise kernel over `nodes` writing `outputs` can compute
/// `scale` (a whole-tensor `dynamic_scale`) itself: the scaled tensor is one
/// of the outputs (or, with no outputs, one of `nodes`), in bf16 or f32, on
/// the kernel's vector path.
pub fn can_fuse_tensor_scale(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    scale: NodeId,
) -> bool {
    let Op::DynamicScale { per_row: false, .. } = graph.node(scale).op else {
        return false;
    };
    let x = scaled_value(graph, scale);
    let computed = computed_values(outputs, x);
    let total = graph.ty(computed[0]).shape.numel();
    (outputs.contains(&x) || (outputs.is_empty() && nodes.contains(&x)))
        && matches!(graph.ty(x).dtype, DType::BF16 | DType::F32)
        && vector_width(graph, &computed).is_some_and(|w| total % w == 0)
}

/// The value whose whole-tensor scale `scale` is (what holds its elements).
fn scaled_value(graph: &Graph, scale: NodeId) -> NodeId {
    crate::lower::storage_of(graph, graph.operands(scale)[0])
}

/// What a pointwise kernel evaluates per element: its outputs, or the value
/// `x` it only reduces for a tensor scale when it stores nothing.
fn computed_values(outputs: &[NodeId], x: NodeId) -> Vec<NodeId> {
    if outputs.is_empty() {
        vec![x]
    } else {
        outputs.to_vec()
    }
}

/// [`pointwise_with`] rendering `recipe`, computing each GroupNorm of
/// `stats` from the `(mean, rstd)` pairs in its temporary.
pub(crate) fn pointwise_kernel(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    config: Option<LaunchConfig>,
    recipe: Recipe,
    stats: &[(NodeId, Temp)],
    tensor_scale: Option<NodeId>,
) -> Result<KernelSource, CodegenError> {
    let block = config.map_or(BLOCK_THREADS, |c| c.block_threads);
    if let Some(scale) = tensor_scale {
        if !can_fuse_tensor_scale(graph, nodes, outputs, scale) {
            return Err(CodegenError::Invalid(
                "a tensor scale a pointwise kernel cannot compute".into(),
            ));
        }
    }
    check_block(block)?;
    let config = LaunchConfig {
        block_threads: block,
        threads_per_row: 0,
    };
    // The values evaluated per element: the outputs, or (a tensor scale
    // with nothing stored) the scaled value.
    let scaled_x = tensor_scale.map(|scale| scaled_value(graph, scale));
    let computed = match scaled_x {
        Some(x) => computed_values(outputs, x),
        None => outputs.to_vec(),
    };
    let Some(&first_value) = computed.first() else {
        return Err(CodegenError::Invalid(
            "a pointwise kernel with nothing to compute".into(),
        ));
    };
    let total = graph.ty(first_value).shape.numel();
    check_outputs(graph, outputs, total)?;
    let mut e = Emitter::new(graph, nodes.iter().copied(), 1);
    for &(node, temp) in stats {
        e.use_group_stats(node, temp);
    }
    // 64-bit indices where any tensor the kernel touches needs them (or a
    // tensor scale's grid-stride loop would step past 32 bits).
    let stride = TENSOR_SCALE_MAX_BLOCKS * block as usize * 16;
    let wide = needs_wide_indices(graph, nodes, outputs)
        || (tensor_scale.is_some() && total + stride > i32::MAX as usize);
    if wide {
        e.use_wide_indices();
    }
    let index = e.index_type();
    // The thread's first element, its block index widened first.
    let first = if wide {
        "(long long)blockIdx.x"
    } else {
        "blockIdx.x"
    };
    let width = vector_width(graph, &computed).filter(|w| total % w == 0);
    let Some(w) = width else {
        e.line(format!(
            "const {index} i = {first} * {block} + threadIdx.x;"
        ));
        e.line(format!("if (i >= {total}) return;"));
        for &out in outputs {
            let dims = graph.ty(out).shape.dims().to_vec();
            let index = e.delinearize("i", dims);
            let v = e.stored_value(out, &index)?;
            e.store(out, "i", &v);
        }
        let grid = grid_for(total, block as usize)?;
        return finish(graph, e, nodes, "", [grid, 1, 1], config, recipe);
    };
    // Vectorized: each thread computes `w` consecutive elements; operands
    // read at the element's own index come in one 16-byte load, outputs go
    // out in one 16-byte store.
    let scaled = tensor_scale.zip(scaled_x).map(|(scale, x)| {
        let k = computed.iter().position(|&o| o == x).unwrap_or(0);
        (scale, k, graph.ty(x).dtype)
    });
    let mut grid = grid_for(total / w, block as usize)?;
    if scaled.is_some() {
        // A tensor scale: grid-stride over at most TENSOR_SCALE_MAX_BLOCKS
        // blocks (each block ends in two atomics on the same words), and
        // every thread reaches the block's reduction.
        grid = grid.min(TENSOR_SCALE_MAX_BLOCKS as u32);
        e.line("float amax = 0.0f;");
        e.open(format!(
            "for ({index} i0 = ({first} * {block} + threadIdx.x) * {w}; i0 < {total}; \
             i0 += ({index})gridDim.x * {block} * {w})"
        ));
    } else {
        e.line(format!(
            "const {index} i0 = ({first} * {block} + threadIdx.x) * {w};"
        ));
        e.line(format!("if (i0 >= {total}) return;"));
    }
    for k in 0..computed.len() {
        e.line(format!("float o{k}[{w}];"));
    }
    e.vectorize("i", "i0", w);
    let mark = e.mark();
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    e.line(format!("const {index} i = i0 + v;"));
    for (k, &out) in computed.iter().enumerate() {
        let dims = graph.ty(out).shape.dims().to_vec();
        let index = e.delinearize("i", dims);
        let v = e.stored_value(out, &index)?;
        e.line(format!("o{k}[v] = {v};"));
    }
    if let Some((_, k, _)) = scaled {
        e.line(format!("amax = fmaxf(amax, fabsf(o{k}[v]));"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (k, &out) in outputs.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, o{k});"));
    }
    let Some((scale, _, x_dtype)) = scaled else {
        return finish(graph, e, nodes, "", [grid, 1, 1], config, recipe);
    };
    e.close();
    tensor_scale_epilogue(graph, &mut e, scale, x_dtype, block)?;
    let kind = "dynamic_scale";
    finish_with_scratch(graph, e, nodes, kind, [grid, 1, 1], config, recipe, 2)
}

/// The end of a kernel that reduced its threads' `amax` for `scale` (a
/// whole-tensor `dynamic_scale` of values stored as `x_dtype`): the block's
/// absmax, then the grid's through the scratch words `s0` (the maximum's
/// bits, then a count of finished blocks), the last block writing
/// `max(amax, MIN_AMAX) / max_finite` and resetting the scratch for the
/// next launch. The stored values are rounded to `x_dtype`, and rounding is
/// monotonic, so the maximum is rounded once, here.
fn tensor_scale_epilogue(
    graph: &Graph,
    e: &mut Emitter,
    scale: NodeId,
    x_dtype: DType,
    block: u32,
) -> Result<(), CodegenError> {
    let Op::DynamicScale { dtype, .. } = graph.node(scale).op else {
        return Err(CodegenError::Invalid(
            "a tensor scale without its op".into(),
        ));
    };
    if x_dtype == DType::BF16 {
        e.line("amax = fx_round_bf16(amax);");
    }
    let p = e.param(scale, true);
    e.line(format!("__shared__ float fx_scratch[{}];", block / 32));
    for line in grid_amax_scale(&format!("p{p}"), block, dtype)?.lines() {
        // The lines are indented for a function body, as `e` is here.
        e.line(line.strip_prefix("    ").unwrap_or(line));
    }
    Ok(())
}

/// The end of a kernel whose threads each hold an `amax` (and which
/// declared `fx_scratch`): the block's maximum, then the grid's through the
/// scratch words `s0` (the maximum's bits, then a count of finished
/// blocks), the last block writing `max(amax, MIN_AMAX) / max_finite(dtype)`
/// to `scale[0]` and resetting the scratch for the next launch. Lines
/// indented for a function body.
fn grid_amax_scale(scale: &str, block: u32, dtype: DType) -> Result<String, CodegenError> {
    let max = dtype
        .max_finite()
        .ok_or_else(|| CodegenError::Invalid(format!("a {dtype} quantization scale")))?;
    Ok(format!(
        r#"    amax = fx_row_max(amax, {block}, fx_scratch);
    if (threadIdx.x == 0) {{
        atomicMax(s0, __float_as_uint(amax));
        __threadfence();
        if (atomicAdd(s0 + 1, 1u) == gridDim.x - 1) {{
            const float total_amax = __uint_as_float(atomicExch(s0, 0u));
            atomicExch(s0 + 1, 0u);
            {scale}[0] = fmaxf(total_amax, {min_amax}) / {max};
        }}
    }}
"#,
        min_amax = float_literal(MIN_AMAX),
        max = float_literal(max),
    ))
}

/// Elements per vector access: 8 for bf16/f16, 4 for f32 when every output
/// has that element size (16-byte accesses); with fp8 outputs, 8 (an 8-byte
/// fp8 store) or, next to f32 outputs, 4. `None` for other mixes.
pub(crate) fn vector_width(graph: &Graph, outputs: &[NodeId]) -> Option<usize> {
    let sizes: Vec<usize> = outputs
        .iter()
        .map(|&o| graph.ty(o).dtype.size_bytes())
        .collect();
    let largest = *sizes.iter().max()?;
    let same = sizes.iter().all(|&s| s == largest);
    let with_fp8 = sizes.contains(&1) && sizes.iter().all(|&s| [1, 2, 4].contains(&s));
    match largest {
        1 => Some(8),
        2 | 4 if same || with_fp8 => Some(16 / largest),
        _ => None,
    }
}

pub(crate) fn grid_for(items: usize, per_block: usize) -> Result<u32, CodegenError> {
    u32::try_from(items.div_ceil(per_block))
        .map_err(|_| CodegenError::TooLarge(format!("{items} work items")))
}

/// How a row kernel spreads a row over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowShape {
    /// Elements per vector access (1, 4 or 8).
    pub width: u32,
    /// Threads per row (a power of two, at most 256).
    pub tpr: u32,
    /// Vector chunks per thread.
    pub chunks_per_thread: u32,
    /// Rows per block.
    pub rows_per_block: u32,
}

impl RowShape {
    /// A row of `c` elements read `width` at a time: the most threads (up to
    /// 256) that split its chunks evenly, or, when that leaves a thread more
    /// than 8 chunks, the fewest threads (a power of two up to 256) that
    /// leave it at most 8, the last round ragged.
    pub fn for_width(c: usize, width: usize) -> RowShape {
        let chunks = c / width;
        let mut tpr = 1usize;
        while tpr < 256 && chunks % (tpr * 2) == 0 {
            tpr *= 2;
        }
        // At most 8 chunks (64 registers) per thread: more threads per row,
        // the fewest that suffice (a ragged last chunk round is cheaper than
        // 256 threads on a row of 288 chunks, most of them idle the second
        // time round).
        while chunks.div_ceil(tpr) > 8 && tpr < 256 {
            tpr *= 2;
        }
        RowShape {
            width: width as u32,
            tpr: tpr as u32,
            chunks_per_thread: chunks.div_ceil(tpr) as u32,
            rows_per_block: BLOCK_THREADS / tpr as u32,
        }
    }

    /// A row of `c` elements read `width` at a time by `tpr` threads, in
    /// blocks of `block` threads; `None` when `tpr` is not a power of two
    /// dividing the block.
    pub fn with_threads(c: usize, width: usize, tpr: u32, block: u32) -> Option<RowShape> {
        if !tpr.is_power_of_two() || tpr > block || block % tpr != 0 {
            return None;
        }
        Some(RowShape {
            width: width as u32,
            tpr,
            chunks_per_thread: (c / width).div_ceil(tpr as usize) as u32,
            rows_per_block: block / tpr,
        })
    }
}

/// A row kernel for `reduction` (a LayerNorm, RMSNorm, softmax or per-row
/// fp8 scale over the last axis) with the rest of `nodes` as prologue and
/// epilogue, and optionally a second, per-row fp8 scale of an epilogue
/// value (LayerNorm → modulation → scale → quantize in one kernel).
///
/// With a second scale the epilogue runs in two passes over the row: the
/// first computes the scaled value into registers (and stores every output
/// that does not need the scale), the row's absmax is reduced, then the
/// second pass computes and stores what reads the scale (the fp8 values).
/// Scales are stored once per row, by the row's first thread.
pub fn row(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    reduction: NodeId,
) -> Result<KernelSource, CodegenError> {
    row_with(graph, nodes, outputs, reduction, None)
}

/// [`row`] with `config`'s threads per row and per block (by default the
/// [`RowShape::for_width`] heuristic in blocks of 256).
pub fn row_with(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    reduction: NodeId,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    let recipe = Recipe::Row {
        nodes: nodes.to_vec(),
        outputs: outputs.to_vec(),
        reduction,
    };
    let r = graph.node(reduction).clone();
    let r_operands = graph.operands(reduction);
    let x = r_operands[0];
    let dims = graph.ty(x).shape.dims().to_vec();
    let c = *dims.last().unwrap_or(&1);
    let total = graph.ty(x).shape.numel();
    let rows = total / c;
    // 64-bit element indices where a tensor the kernel touches needs them
    // (an fp8 convolution's patch rows at 1024²); rows stay 32-bit.
    let wide = needs_wide_indices(graph, nodes, outputs);
    if rows > i32::MAX as usize {
        return Err(CodegenError::TooLarge(format!(
            "{} has {rows} rows; row kernels index rows with 32-bit integers",
            graph.ty(x)
        )));
    }
    // A second reduction: a per-row scale of a value the epilogue computes.
    let second = nodes
        .iter()
        .copied()
        .find(|&n| n != reduction && is_row_scale(graph, n));
    let is_scale_output =
        |o: &NodeId| (*o == reduction && is_row_scale(graph, *o)) || Some(*o) == second;
    let element_outputs: Vec<NodeId> = outputs
        .iter()
        .copied()
        .filter(|o| !is_scale_output(o))
        .collect();
    check_outputs(graph, &element_outputs, total)?;
    let width = vector_width(graph, &element_outputs)
        .filter(|w| c % w == 0)
        .unwrap_or(1);
    let shape = match config {
        None => RowShape::for_width(c, width),
        Some(cfg) => {
            check_block(cfg.block_threads)?;
            RowShape::with_threads(c, width, cfg.threads_per_row, cfg.block_threads).ok_or_else(
                || {
                    CodegenError::Unsupported(format!(
                        "{} threads per row in blocks of {}",
                        cfg.threads_per_row, cfg.block_threads
                    ))
                },
            )?
        }
    };
    let block = shape.rows_per_block * shape.tpr;
    let config = LaunchConfig {
        block_threads: block,
        threads_per_row: shape.tpr,
    };
    let (w, tpr, cpt, rpb) = (
        shape.width as usize,
        shape.tpr,
        shape.chunks_per_thread as usize,
        shape.rows_per_block,
    );
    let chunks = c / w;
    if cpt * w > 64 {
        return Err(CodegenError::Unsupported(format!(
            "{} over rows of {c} elements (at most 16384)",
            r.op.kind_name()
        )));
    }
    let downstream = downstream_of(graph, nodes, reduction);
    let (epilogue_outs, prologue_outs): (Vec<NodeId>, Vec<NodeId>) =
        element_outputs.iter().partition(|o| downstream.contains(o));
    // With a second scale: outputs of the first epilogue pass, and of the
    // second (those that read the scale).
    let after_second = second.map(|s| downstream_of(graph, nodes, s));
    let (second_pass_outs, first_pass_outs): (Vec<NodeId>, Vec<NodeId>) = epilogue_outs
        .iter()
        .partition(|o| after_second.as_ref().is_some_and(|d| d.contains(o)));
    // A per-row scale of a value the kernel computes (FLUX's
    // `concat(attention, GELU(mlp))`) over a wide row evaluates the value
    // twice, for the absmax and again for the output, instead of holding
    // the row in registers: 29 registers instead of 80, so nearly three times
    // the warps hide the loads' latency (the single blocks' kernel, 15360 wide:
    // 87.6 → 77.7 us on the H200, `benches/results/2026-11-29_row_reread.log`).
    // A value that is only loaded keeps the registers (re-reading it was
    // slower: 38.1 → 41.1 us over 12288-wide rows).
    let reread = is_row_scale(graph, reduction)
        && second.is_none()
        && cpt * w >= REREAD_MIN_ELEMENTS
        && computes_before(graph, nodes, &downstream);
    let needs_pair = rope_reads(graph, nodes, reduction);
    if needs_pair && c % 2 != 0 {
        return Err(CodegenError::Unsupported(format!(
            "rotary pairs over an odd width {c}"
        )));
    }

    let mut e = Emitter::new(graph, nodes.iter().copied(), 1);
    if wide {
        e.use_wide_indices();
    }
    let first_element = if wide {
        format!("const long long i0 = (long long)row * {c} + c0;")
    } else {
        format!("const int i0 = row * {c} + c0;")
    };
    if tpr > 32 {
        e.line(format!("__shared__ float fx_scratch[{}];", block / 32));
    }
    e.line(format!(
        "const int row = blockIdx.x * {rpb} + threadIdx.x / {tpr};"
    ));
    e.line(format!("const int lane = threadIdx.x % {tpr};"));
    e.line(format!("const bool active = row < {rows};"));
    if reread {
        e.line("float scale_amax = 0.0f;");
    } else {
        e.line(format!("float x[{}];", cpt * w));
    }
    e.vectorize("i", "i0", w);
    e.vectorize("c", "c0", w);

    // Prologue: the reduced operand into registers (or its absmax, when
    // re-read), prologue outputs stored.
    e.line("#pragma unroll");
    e.open(format!("for (int k = 0; k < {cpt}; ++k)"));
    e.line(format!("const int chunk = lane + k * {tpr};"));
    if !reread {
        e.line(format!(
            "for (int v = 0; v < {w}; ++v) x[k * {w} + v] = 0.0f;"
        ));
    }
    e.open(format!("if (active && chunk < {chunks})"));
    e.line(format!("const int c0 = chunk * {w};"));
    e.line(first_element.clone());
    for j in 0..prologue_outs.len() {
        e.line(format!("float po{j}[{w}];"));
    }
    let mark = e.mark();
    element_loop_header(&mut e, w, c);
    let index = e.delinearize("i", dims.clone());
    let xv = e.value(x, &index)?;
    if reread {
        e.line(format!("scale_amax = fmaxf(scale_amax, fabsf({xv}));"));
    } else {
        e.line(format!("x[k * {w} + v] = {xv};"));
    }
    for (j, &out) in prologue_outs.iter().enumerate() {
        let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
        let v = e.stored_value(out, &out_index)?;
        e.line(format!("po{j}[v] = {v};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (j, &out) in prologue_outs.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, po{j});"));
    }
    e.close();
    e.close();

    // Row statistics over the registers (ragged chunks excluded).
    let row = RowLoop {
        w,
        tpr,
        cpt,
        chunks,
    };
    let normalized = match &r.op {
        Op::LayerNorm { eps } => {
            row.sum(&mut e, "sum", "x", "xe");
            e.line(format!("const float mean = sum / {c}.0f;"));
            row.sum(&mut e, "sq", "x", "(xe - mean) * (xe - mean)");
            e.line(format!(
                "const float rstd = rsqrtf(sq / {c}.0f + {});",
                float_literal(eps.get())
            ));
            "(x[k * W + v] - mean) * rstd"
        }
        Op::RmsNorm { eps } => {
            row.sum(&mut e, "sq", "x", "xe * xe");
            e.line(format!(
                "const float rstd = rsqrtf(sq / {c}.0f + {});",
                float_literal(eps.get())
            ));
            "x[k * W + v] * rstd"
        }
        Op::Softmax => {
            e.line("float mx = -__int_as_float(0x7f800000);");
            e.line("#pragma unroll");
            e.line(row.over("x", "mx = fmaxf(mx, xe);"));
            e.line(format!("mx = {};", row.reduce("max", "mx")));
            row.sum(&mut e, "sum", "x", "expf(xe - mx)");
            "expf(x[k * W + v] - mx) / sum"
        }
        Op::DynamicScale { dtype, .. } if reread => {
            row.scale_of_amax(&mut e, reduction, "scale_amax", "scale", *dtype)?;
            e.provide_everywhere(reduction, "scale".into());
            "" // the epilogue evaluates x again
        }
        Op::DynamicScale { dtype, .. } => {
            row.scale(&mut e, reduction, "x", "scale", *dtype)?;
            e.provide_everywhere(reduction, "scale".into());
            "x[k * W + v]"
        }
        other => {
            return Err(CodegenError::Unsupported(format!(
                "{} as a row reduction",
                other.kind_name()
            )))
        }
    };
    let normalized = normalized.replace('W', &w.to_string());
    // The value the epilogue reads for the reduction at its element: the
    // normalized value, or for a scale the reduced operand itself.
    let (provided_node, provided_dims) = if is_row_scale(graph, reduction) {
        (x, dims.clone())
    } else {
        (reduction, graph.ty(reduction).shape.dims().to_vec())
    };
    let second_in = second.map(|s| graph.operands(s)[0]);
    if second.is_some() {
        e.line(format!("float q[{}];", cpt * w));
    }

    // Epilogue: normalized value (and affine) per element, then the tail.
    // A rotary epilogue also needs its pair partner's value: the same
    // thread holds it when chunks are vectors (width even), else the
    // neighbouring lane does (c ^ 1 = (lane ^ 1) + k·tpr, the shuffle runs
    // outside the bounds guard so every lane takes part).
    e.line("#pragma unroll");
    e.open(format!("for (int k = 0; k < {cpt}; ++k)"));
    e.line(format!("const int chunk = lane + k * {tpr};"));
    e.line(format!("const bool ok = active && chunk < {chunks};"));
    e.line(format!("const int c0 = chunk * {w};"));
    e.line(format!("float y[{w}];"));
    e.line(format!("for (int v = 0; v < {w}; ++v) y[v] = 0.0f;"));
    if second.is_some() {
        e.line(format!(
            "for (int v = 0; v < {w}; ++v) q[k * {w} + v] = 0.0f;"
        ));
    }
    e.open("if (ok)");
    if reread {
        e.line(first_element.clone());
    }
    let mark = e.mark();
    if reread {
        // x at each element again, its loads (and math) emitted anew.
        element_loop_header(&mut e, w, c);
        let index = e.delinearize("i", dims.clone());
        let xv = e.value(x, &index)?;
        e.line(format!("y[v] = {xv};"));
    } else {
        e.line("#pragma unroll");
        e.open(format!("for (int v = 0; v < {w}; ++v)"));
        e.line("const int c = c0 + v;");
    }
    let mut y = normalized;
    let c_index: Index = vec!["c".to_string()];
    if !is_row_scale(graph, reduction) {
        if let Some(&wt) = r_operands.get(1) {
            let wv = e.value(wt, &c_index)?;
            y = format!("({y}) * {wv}");
        }
        if let Some(&b) = r_operands.get(2) {
            let bv = e.value(b, &c_index)?;
            y = format!("{y} + {bv}");
        }
    }
    if !reread {
        e.line(format!("y[v] = {y};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    e.close();
    if needs_pair && w == 1 {
        e.line("const float y_pair = __shfl_xor_sync(0xffffffffu, y[0], 1);");
    }
    e.open("if (ok)");
    e.line(first_element.clone());
    for j in 0..first_pass_outs.len() {
        e.line(format!("float eo{j}[{w}];"));
    }
    let mark = e.mark();
    element_loop_header(&mut e, w, c);
    let r_index = e.delinearize("i", provided_dims.clone());
    e.provide(provided_node, &r_index, "y[v]".to_string());
    if needs_pair {
        let mut pair_index = r_index.clone();
        let last = provided_dims.len() - 1;
        pair_index[last] = e.bind_index(format!("{} ^ 1", r_index[last]));
        let pair = if w == 1 { "y_pair" } else { "y[v ^ 1]" };
        e.provide(provided_node, &pair_index, pair.to_string());
    }
    if let Some(q) = second_in {
        let q_index = e.delinearize("i", graph.ty(q).shape.dims().to_vec());
        let v = e.value(q, &q_index)?;
        e.line(format!("q[k * {w} + v] = {v};"));
    }
    for (j, &out) in first_pass_outs.iter().enumerate() {
        let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
        let v = e.stored_value(out, &out_index)?;
        e.line(format!("eo{j}[v] = {v};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (j, &out) in first_pass_outs.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, eo{j});"));
    }
    e.close();
    e.close();

    // The second scale and the second pass, which reads it.
    if let (Some(s), Some(q)) = (second, second_in) {
        let Op::DynamicScale { dtype, .. } = graph.node(s).op else {
            unreachable!("is_row_scale")
        };
        row.scale(&mut e, s, "q", "scale2", dtype)?;
        e.provide_everywhere(s, "scale2".into());
        e.line("#pragma unroll");
        e.open(format!("for (int k = 0; k < {cpt}; ++k)"));
        e.line(format!("const int chunk = lane + k * {tpr};"));
        e.open(format!("if (active && chunk < {chunks})"));
        e.line(format!("const int c0 = chunk * {w};"));
        e.line(first_element.clone());
        for j in 0..second_pass_outs.len() {
            e.line(format!("float so{j}[{w}];"));
        }
        let mark = e.mark();
        element_loop_header(&mut e, w, c);
        let q_index = e.delinearize("i", graph.ty(q).shape.dims().to_vec());
        e.provide(q, &q_index, format!("q[k * {w} + v]"));
        for (j, &out) in second_pass_outs.iter().enumerate() {
            let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
            let v = e.stored_value(out, &out_index)?;
            e.line(format!("so{j}[v] = {v};"));
        }
        e.close();
        let loads = e.take_vector_loads();
        e.insert(mark, loads);
        for (j, &out) in second_pass_outs.iter().enumerate() {
            let p = e.param(out, true);
            e.line(format!("fx_vstore<{w}>(p{p}, i0, so{j});"));
        }
        e.close();
        e.close();
    }

    let grid = grid_for(rows, rpb as usize)?;
    finish(
        graph,
        e,
        nodes,
        r.op.kind_name(),
        [grid, 1, 1],
        config,
        recipe,
    )
}

/// Elements per thread from which a row kernel's per-row scale re-reads a
/// computed row instead of holding it in registers.
const REREAD_MIN_ELEMENTS: usize = 32;

/// Whether the part of a row kernel before its reduction (`nodes` less
/// `downstream`) does arithmetic, not only loads, slices and concats.
fn computes_before(graph: &Graph, nodes: &[NodeId], downstream: &HashSet<NodeId>) -> bool {
    nodes.iter().any(|n| {
        !downstream.contains(n)
            && matches!(
                graph.node(*n).op,
                Op::Unary(_) | Op::Binary(_) | Op::BinaryScalar { .. }
            )
    })
}

/// Whether `id` is a per-row fp8 scale.
fn is_row_scale(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::DynamicScale { per_row: true, .. })
}

/// How a row kernel's threads cover a row, for the statistics loops.
struct RowLoop {
    w: usize,
    tpr: u32,
    cpt: usize,
    chunks: usize,
}

impl RowLoop {
    /// The row-wide `kind` ("sum" or "max") of each thread's `v`.
    fn reduce(&self, kind: &str, v: &str) -> String {
        if self.tpr > 32 {
            format!("fx_row_{kind}({v}, {}, fx_scratch)", self.tpr)
        } else {
            format!("fx_group_{kind}({v}, {})", self.tpr)
        }
    }

    /// A loop running `body` with `xe` bound to each element of register
    /// array `regs` this thread holds (ragged chunks excluded).
    fn over(&self, regs: &str, body: &str) -> String {
        let (w, tpr, cpt, chunks) = (self.w, self.tpr, self.cpt, self.chunks);
        format!(
            "for (int k = 0; k < {cpt}; ++k) if (lane + k * {tpr} < {chunks}) for (int v = 0; v < {w}; ++v) {{ const float xe = {regs}[k * {w} + v]; {body} }}"
        )
    }

    /// `float name` = the row sum of `term` over register array `regs`.
    fn sum(&self, e: &mut Emitter, name: &str, regs: &str, term: &str) {
        e.line(format!("float {name} = 0.0f;"));
        e.line("#pragma unroll");
        e.line(self.over(regs, &format!("{name} += {term};")));
        e.line(format!("{name} = {};", self.reduce("sum", name)));
    }

    /// `const float name` = the fp8 scale of the row in register array
    /// `regs`, `max(amax, MIN_AMAX) / max_finite(dtype)`, stored for the row
    /// by its first thread into `node`'s buffer.
    fn scale(
        &self,
        e: &mut Emitter,
        node: NodeId,
        regs: &str,
        name: &str,
        dtype: DType,
    ) -> Result<(), CodegenError> {
        let amax = format!("{name}_amax");
        e.line(format!("float {amax} = 0.0f;"));
        e.line("#pragma unroll");
        e.line(self.over(regs, &format!("{amax} = fmaxf({amax}, fabsf(xe));")));
        self.scale_of_amax(e, node, &amax, name, dtype)
    }

    /// [`RowLoop::scale`] from each thread's absmax in variable `amax`.
    fn scale_of_amax(
        &self,
        e: &mut Emitter,
        node: NodeId,
        amax: &str,
        name: &str,
        dtype: DType,
    ) -> Result<(), CodegenError> {
        let max = dtype
            .max_finite()
            .ok_or_else(|| CodegenError::Invalid(format!("a {dtype} quantization scale")))?;
        e.line(format!("{amax} = {};", self.reduce("max", amax)));
        e.line(format!(
            "const float {name} = fmaxf({amax}, {}) / {};",
            float_literal(MIN_AMAX),
            float_literal(max)
        ));
        let p = e.param(node, true);
        e.line(format!(
            "if (active && lane == 0) fx_store(p{p}, row, {name});"
        ));
        Ok(())
    }
}

/// Blocks of a whole-tensor scale kernel at most (enough to fill the GPU;
/// each thread then strides over the tensor).
const TENSOR_SCALE_MAX_BLOCKS: usize = 1024;

/// A whole-tensor fp8 scale (`dynamic_scale` with `per_row = false`): every
/// block reduces the absmax of its share of the tensor, folds it into a
/// scratch word with `atomicMax` (absmax ≥ 0, so float bits order as
/// unsigned integers), and the last block to finish — counted by a second
/// scratch word — writes `max(amax, MIN_AMAX) / max_finite` and zeroes both
/// words for the next run. One kernel, no host synchronization.
pub fn tensor_scale(graph: &Graph, node: NodeId) -> Result<KernelSource, CodegenError> {
    tensor_scale_with(graph, node, None)
}

/// [`tensor_scale`] in blocks of `config`'s threads (256 by default).
pub fn tensor_scale_with(
    graph: &Graph,
    node: NodeId,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    let block = config.map_or(BLOCK_THREADS, |c| c.block_threads);
    check_block(block)?;
    let Op::DynamicScale {
        dtype,
        per_row: false,
    } = graph.node(node).op
    else {
        return Err(CodegenError::Invalid(
            "tensor_scale of something other than a whole-tensor scale".into(),
        ));
    };
    let x = crate::lower::storage_of(graph, graph.operands(node)[0]);
    let total = elements(graph, x)?;
    let x_type = c_type(graph.ty(x).dtype)?;
    let w = vector_width(graph, &[x])
        .filter(|w| total % w == 0)
        .unwrap_or(1);
    let blocks = (total / w)
        .div_ceil(block as usize)
        .clamp(1, TENSOR_SCALE_MAX_BLOCKS);
    let source = format!(
        r#"extern "C" __global__ void __launch_bounds__({threads}) {NAME}(const {x_type}* __restrict__ p0, float* __restrict__ p1, unsigned int* __restrict__ s0) {{
    __shared__ float fx_scratch[{warps}];
    float amax = 0.0f;
    for (int i0 = (blockIdx.x * {threads} + threadIdx.x) * {w}; i0 < {total}; i0 += gridDim.x * {threads} * {w}) {{
        const auto r = fx_vload<{w}>(p0, i0);
        #pragma unroll
        for (int v = 0; v < {w}; ++v) amax = fmaxf(amax, fabsf(fx_vget<{w}>(r, v)));
    }}
{finish}}}
"#,
        threads = block,
        warps = block / 32,
        finish = grid_amax_scale("p1", block, dtype)?,
    );
    Ok(KernelSource {
        source,
        params: vec![
            Param {
                buf: Buf::Node(x),
                written: false,
                offset: 0,
            },
            Param {
                buf: Buf::Node(node),
                written: true,
                offset: 0,
            },
        ],
        grid: [blocks as u32, 1, 1],
        block: [block, 1, 1],
        ops: vec!["dynamic_scale"],
        scratch_words: 2,
        config: LaunchConfig {
            block_threads: block,
            threads_per_row: 0,
        },
        recipe: Recipe::TensorScale { node },
    })
}

/// Whether a tensor a kernel over `nodes` touches (a node, an operand, an
/// output) has more elements than 32-bit indices reach.
fn needs_wide_indices(graph: &Graph, nodes: &[NodeId], outputs: &[NodeId]) -> bool {
    nodes
        .iter()
        .chain(outputs)
        .flat_map(|&n| std::iter::once(n).chain(graph.operands(n)))
        .any(|n| graph.ty(n).shape.numel() > i32::MAX as usize)
}

/// Opens the per-element loop of a row chunk: `v` over the chunk, `i` the
/// element's linear index and `c` its position in the row (`i % c` is `c`).
fn element_loop_header(e: &mut Emitter, w: usize, c: usize) {
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    let index = e.index_type();
    e.line(format!("const {index} i = i0 + v;"));
    e.line("const int c = c0 + v;");
    e.alias_index(&format!("i % {c}"), "c");
}

/// Whether an `apply_rope` among `nodes` rotates `reduction`'s output
/// (directly or through reshapes).
fn rope_reads(graph: &Graph, nodes: &[NodeId], reduction: NodeId) -> bool {
    nodes.iter().any(|&n| {
        graph.node(n).op == Op::ApplyRope && {
            let mut x = graph.operands(n)[0];
            while let Op::Reshape(_) = graph.node(x).op {
                x = graph.operands(x)[0];
            }
            x == reduction
        }
    })
}

/// Nodes of `nodes` that depend on `root` (inclusive).
pub(crate) fn downstream_of(graph: &Graph, nodes: &[NodeId], root: NodeId) -> HashSet<NodeId> {
    let members: HashSet<NodeId> = nodes.iter().copied().collect();
    let mut found: HashSet<NodeId> = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        for (user, _) in graph.users(n) {
            // Reshapes are views inside a kernel too.
            let inside = members.contains(&user) || matches!(graph.node(user).op, Op::Reshape(_));
            if inside && found.insert(user) {
                stack.push(user);
            }
        }
    }
    found
}

pub(crate) fn elements(graph: &Graph, node: NodeId) -> Result<usize, CodegenError> {
    let n = graph.ty(node).shape.numel();
    if n > i32::MAX as usize {
        return Err(CodegenError::TooLarge(format!(
            "{} has {n} elements; kernels index with 32-bit integers",
            graph.ty(node)
        )));
    }
    Ok(n)
}

pub(crate) fn check_outputs(
    graph: &Graph,
    outputs: &[NodeId],
    total: usize,
) -> Result<(), CodegenError> {
    for &o in outputs {
        if graph.ty(o).shape.numel() != total {
            return Err(CodegenError::Unsupported(format!(
                "a fused group writing {} and a {total}-element iteration space",
                graph.ty(o)
            )));
        }
    }
    Ok(())
}

/// Wraps the body in a kernel signature.
fn finish(
    graph: &Graph,
    e: Emitter,
    nodes: &[NodeId],
    anchor_kind: &str,
    grid: [u32; 3],
    config: LaunchConfig,
    recipe: Recipe,
) -> Result<KernelSource, CodegenError> {
    finish_with_scratch(graph, e, nodes, anchor_kind, grid, config, recipe, 0)
}

/// [`finish`] for a kernel that also takes `scratch_words` words of
/// zero-initialized scratch as its last parameter (`s0`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_with_scratch(
    graph: &Graph,
    mut e: Emitter,
    nodes: &[NodeId],
    anchor_kind: &str,
    grid: [u32; 3],
    config: LaunchConfig,
    recipe: Recipe,
    scratch_words: u32,
) -> Result<KernelSource, CodegenError> {
    let block = config.block_threads;
    let body = drop_unused_indices(e.take_lines());
    let params = e.params().to_vec();
    let mut signature = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let ty = c_type(p.buf.dtype(graph))?;
        let constness = if p.written { "" } else { "const " };
        signature.push(format!("{constness}{ty}* __restrict__ p{i}"));
    }
    if scratch_words > 0 {
        signature.push("unsigned int* __restrict__ s0".to_string());
    }
    let mut source = format!(
        "extern \"C\" __global__ void __launch_bounds__({block}) {NAME}({}) {{\n",
        signature.join(", ")
    );
    for line in body {
        source.push_str(&line);
        source.push('\n');
    }
    source.push_str("}\n");
    let mut ops: Vec<&'static str> = Vec::new();
    if !anchor_kind.is_empty() {
        ops.push(kind_static(anchor_kind));
    }
    for &n in nodes {
        let kind = graph.node(n).op.kind_name();
        if !ops.contains(&kind) {
            ops.push(kind);
        }
    }
    Ok(KernelSource {
        source,
        params,
        grid,
        block: [block, 1, 1],
        ops,
        scratch_words,
        config,
        recipe,
    })
}

/// Removes `const int tN = ...;` lines whose variable nothing reads (index
/// components computed for a shape but never needed), to a fixpoint.
pub(crate) fn drop_unused_indices(mut lines: Vec<String>) -> Vec<String> {
    loop {
        let text = lines.join("\n");
        let unused = |line: &String| {
            let line = line.trim_start();
            let decl = line
                .strip_prefix("const int t")
                .or_else(|| line.strip_prefix("const long long t"))?;
            let digits: String = decl.chars().take_while(|c| c.is_ascii_digit()).collect();
            let var = format!("t{digits}");
            let uses = text
                .match_indices(&var)
                .filter(|(at, _)| {
                    let after = text[at + var.len()..].chars().next();
                    let before = text[..*at].chars().next_back();
                    !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .count();
            (uses == 1).then_some(())
        };
        let before = lines.len();
        lines.retain(|l| unused(l).is_none());
        if lines.len() == before {
            return lines;
        }
    }
}

fn kind_static(kind: &str) -> &'static str {
    match kind {
        "layer_norm" => "layer_norm",
        "rms_norm" => "rms_norm",
        "softmax" => "softmax",
        "dynamic_scale" => "dynamic_scale",
        "group_stats" => "group_stats",
        _ => "row",
    }
}

/// The CUDA type of a storage dtype.
pub fn c_type(dtype: DType) -> Result<&'static str, CodegenError> {
    match dtype {
        DType::F32 => Ok("float"),
        DType::BF16 => Ok("__nv_bfloat16"),
        DType::F16 => Ok("__half"),
        DType::F8E4M3 => Ok("__nv_fp8_e4m3"),
        DType::F8E5M2 => Ok("__nv_fp8_e5m2"),
        other => Err(CodegenError::Unsupported(format!(
            "{other} tensors in generated kernels"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_shapes() {
        // FLUX's LayerNorm rows: 384 chunks of 8 bf16, 3 per thread.
        assert_eq!(
            RowShape::for_width(3072, 8),
            RowShape {
                width: 8,
                tpr: 128,
                chunks_per_thread: 3,
                rows_per_block: 2
            }
        );
        // RMSNorm over a 128-wide head: 16 threads, one chunk each.
        assert_eq!(
            RowShape::for_width(128, 8),
            RowShape {
                width: 8,
                tpr: 16,
                chunks_per_thread: 1,
                rows_per_block: 16
            }
        );
        // A 3×3 convolution's patch row over 256 channels (fp8 im2col):
        // 288 chunks, 64 threads with 4.5 chunks each, not 256 with 1.1.
        assert_eq!(
            RowShape::for_width(2304, 8),
            RowShape {
                width: 8,
                tpr: 64,
                chunks_per_thread: 5,
                rows_per_block: 4
            }
        );
        // The single blocks' concat row: 1920 chunks, 256 threads.
        assert_eq!(RowShape::for_width(15360, 8).tpr, 256);
        // Scalar fallback over an odd width.
        let odd = RowShape::for_width(3000, 1);
        assert_eq!((odd.tpr, odd.chunks_per_thread), (256, 12));
    }
}
