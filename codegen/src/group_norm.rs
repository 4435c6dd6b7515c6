//! GroupNorm over a channels-last image as two generated kernels.
//!
//! In `[N, H, W, C]` layout a group is, for every pixel, `C/G` contiguous
//! channels, so one (batch, group) spans the whole image: at 1024² that is
//! a million pixels, and one CTA per group (32 of them) would leave the GPU
//! idle. The reduction is split instead:
//!
//! 1. **statistics** (grid `chunks × N`): each CTA reads a chunk of pixels
//!    with every channel (rows of `C` contiguous values, loaded `W` at a
//!    time, coalesced), computing the group's pointwise prologue on the way
//!    and storing any prologue value a later kernel reads. Sums are shifted
//!    by one value of each group (its first element), `Σ(x − s)` and
//!    `Σ(x − s)²` in f32, which keeps the variance free of cancellation when
//!    the mean is large next to the spread. Each CTA writes its per-group
//!    partial sums, and the last CTA of each batch to finish (counted in a
//!    scratch word, which it resets for the next run) adds up the chunks in
//!    a fixed order and writes `(mean, rstd)` per group. No host sync, one
//!    launch, deterministic results.
//! 2. **normalize**: an ordinary pointwise kernel over the image that
//!    computes `(x − mean)·rstd·weight + bias` from those statistics plus
//!    the group's epilogue (the SiLU after it), reading `x` back from memory
//!    (or recomputing a prologue nobody stored).
//!
//! The partial sums and statistics are codegen temporaries ([`Temp`]).

use std::collections::HashSet;

use fluxc_ir::{Graph, NodeId, Op};

use crate::buffers::{Buf, Temp, TempKind};
use crate::emit::float_literal;
use crate::emit::Emitter;
use crate::kernels::{
    check_block, check_outputs, downstream_of, elements, finish_with_scratch, pointwise_kernel,
    vector_width, KernelSource, LaunchConfig, Recipe, BLOCK_THREADS,
};
use crate::lower::PendingStep;
use crate::CodegenError;

/// Most chunks a batch's pixels are split into (CTAs per image).
const MAX_CHUNKS: usize = 1024;

/// Pixel rows each thread at least handles in the statistics kernel.
const MIN_ROWS_PER_THREAD: usize = 4;

/// Largest static shared memory the statistics kernel may take.
const MAX_SHARED_BYTES: usize = 48 << 10;

/// What both kernels of one GroupNorm group compute.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNormPlan {
    /// The group's nodes.
    pub nodes: Vec<NodeId>,
    /// What the group writes.
    pub outputs: Vec<NodeId>,
    /// The GroupNorm.
    pub norm: NodeId,
    /// Shifted sums `[N, chunks, G, 2]` (f32).
    pub partials: Temp,
    /// `(mean, rstd)` per `[N, G]` (f32).
    pub stats: Temp,
}

/// How the statistics kernel covers the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub batch: usize,
    /// Pixels per image (`H·W`).
    pub pixels: usize,
    /// Channels.
    pub channels: usize,
    /// Groups.
    pub groups: usize,
    /// Elements per vector access.
    pub width: usize,
    /// Threads sharing one pixel (`C / width`).
    pub slots: usize,
    /// Pixels a CTA reads at once (`threads / slots`).
    pub rows: usize,
    /// Threads per CTA.
    pub threads: usize,
    /// Pixels per chunk (a multiple of `rows`).
    pub pixels_per_chunk: usize,
    /// Chunks per image.
    pub chunks: usize,
}

impl Geometry {
    /// The cover of an `[N, H·W, C]` image in `groups` groups read `width`
    /// at a time: about 256 threads (a whole number of pixels and of warps
    /// per CTA), at most [`MAX_CHUNKS`] chunks per image with at least
    /// [`MIN_ROWS_PER_THREAD`] pixels per thread.
    pub fn new(
        batch: usize,
        pixels: usize,
        channels: usize,
        groups: usize,
        width: usize,
    ) -> Result<Geometry, CodegenError> {
        let slots = channels / width;
        let mut rows = (BLOCK_THREADS as usize / slots).max(1);
        while (rows * slots) % 32 != 0 {
            rows += 1;
        }
        let threads = rows * slots;
        let shared = 2 * threads * width * 4;
        if threads > 1024 || shared > MAX_SHARED_BYTES {
            return Err(CodegenError::Unsupported(format!(
                "group_norm over {channels} channels ({threads} threads of {width} channels \
                 each; at most 1024 threads and {MAX_SHARED_BYTES} bytes of sums)"
            )));
        }
        let chunks = pixels
            .div_ceil(rows * MIN_ROWS_PER_THREAD)
            .clamp(1, MAX_CHUNKS);
        let pixels_per_chunk = pixels.div_ceil(chunks).div_ceil(rows) * rows;
        Ok(Geometry {
            batch,
            pixels,
            channels,
            groups,
            width,
            slots,
            rows,
            threads,
            pixels_per_chunk,
            chunks: pixels.div_ceil(pixels_per_chunk),
        })
    }
}

/// The two steps of the reduction group `nodes` around GroupNorm `norm`.
pub fn lower(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    norm: NodeId,
) -> Result<Vec<PendingStep>, CodegenError> {
    if let Some(&other) = nodes
        .iter()
        .find(|&&n| n != norm && graph.node(n).op.is_reduction())
    {
        return Err(CodegenError::Unsupported(format!(
            "{} in a group_norm kernel",
            graph.node(other).op.kind_name()
        )));
    }
    let geometry = geometry(graph, nodes, outputs, norm)?;
    let temp = |what, elements: usize| Temp {
        of: norm,
        what,
        dtype: fluxc_ir::DType::F32,
        elements: elements as u64,
    };
    let (n, g) = (geometry.batch, geometry.groups);
    let plan = GroupNormPlan {
        nodes: nodes.to_vec(),
        outputs: outputs.to_vec(),
        norm,
        partials: temp(TempKind::GroupPartials, n * geometry.chunks * g * 2),
        stats: temp(TempKind::GroupStats, n * g * 2),
    };
    Ok(vec![
        PendingStep::Kernel(stats(graph, &plan, None)?),
        PendingStep::Kernel(apply(graph, &plan, None)?),
    ])
}

/// The GroupNorm's operand, groups and eps.
fn norm_parts(graph: &Graph, norm: NodeId) -> Result<(NodeId, usize, f32), CodegenError> {
    match graph.node(norm).op {
        Op::GroupNorm { groups, eps } => Ok((graph.operands(norm)[0], groups, eps.get())),
        _ => Err(CodegenError::Invalid(format!(
            "a group_norm plan around {}",
            graph.node(norm).op.kind_name()
        ))),
    }
}

/// Nodes before the norm (the prologue) and the outputs among them.
fn prologue(graph: &Graph, nodes: &[NodeId], outputs: &[NodeId], norm: NodeId) -> Split {
    let downstream = downstream_of(graph, nodes, norm);
    let before: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| !downstream.contains(n))
        .collect();
    let stored: Vec<NodeId> = outputs
        .iter()
        .copied()
        .filter(|o| before.contains(o))
        .collect();
    Split {
        before,
        stored,
        downstream,
    }
}

/// A group split at its GroupNorm.
struct Split {
    /// The prologue's nodes.
    before: Vec<NodeId>,
    /// Prologue values other steps read (stored by the statistics kernel).
    stored: Vec<NodeId>,
    /// The norm and everything after it.
    downstream: HashSet<NodeId>,
}

fn geometry(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    norm: NodeId,
) -> Result<Geometry, CodegenError> {
    let (x, groups, _) = norm_parts(graph, norm)?;
    elements(graph, x)?;
    let dims = graph.ty(x).shape.dims().to_vec();
    let (batch, pixels, channels) = (dims[0], dims[1] * dims[2], dims[3]);
    let split = prologue(graph, nodes, outputs, norm);
    let mut accessed = split.stored.clone();
    accessed.push(x);
    let width = vector_width(graph, &accessed)
        .filter(|w| channels % w == 0)
        .unwrap_or(1);
    Geometry::new(batch, pixels, channels, groups, width)
}

/// The statistics kernel of `plan` (its launch is fixed by the channels:
/// `config` may only repeat it).
pub fn stats(
    graph: &Graph,
    plan: &GroupNormPlan,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    let (x, groups, eps) = norm_parts(graph, plan.norm)?;
    let g = geometry(graph, &plan.nodes, &plan.outputs, plan.norm)?;
    let threads = g.threads as u32;
    if let Some(c) = config.filter(|c| c.block_threads != threads) {
        return Err(CodegenError::Unsupported(format!(
            "a group_norm statistics kernel of {} threads (its channels fix {threads})",
            c.block_threads
        )));
    }
    if plan.partials.elements != (g.batch * g.chunks * groups * 2) as u64 {
        return Err(CodegenError::Invalid(
            "group_norm partial sums sized for another geometry".into(),
        ));
    }
    let split = prologue(graph, &plan.nodes, &plan.outputs, plan.norm);
    check_outputs(graph, &split.stored, elements(graph, x)?)?;
    let dims = graph.ty(x).shape.dims().to_vec();
    let (w, c, per_group) = (g.width, g.channels, g.channels / groups);
    let (hw, chunks, rows) = (g.pixels, g.chunks, g.rows);
    let count = float_literal((hw * per_group) as f32);

    let mut e = Emitter::new(graph, split.before.iter().copied(), 1);
    let partials = e.param_buf(Buf::Temp(plan.partials), true);
    let stats = e.param_buf(Buf::Temp(plan.stats), true);
    e.line(format!("__shared__ float fx_s[{}];", rows * c));
    e.line(format!("__shared__ float fx_q[{}];", rows * c));
    e.line(format!("__shared__ float fx_shift[{groups}];"));
    e.line("__shared__ bool fx_last;");
    e.line("const int b = blockIdx.y;");
    e.line(format!("const int c0 = threadIdx.x % {} * {w};", g.slots));

    // The shift of each group: its first element.
    e.open(format!(
        "for (int g = threadIdx.x; g < {groups}; g += {threads})"
    ));
    let first = e.bind_index(format!("g * {per_group}"));
    let s = e.value(x, &vec!["b".into(), "0".into(), "0".into(), first])?;
    e.line(format!("fx_shift[g] = {s};"));
    e.close();
    e.line("__syncthreads();");
    e.line(format!("float sh[{w}], s[{w}], q[{w}];"));
    e.line("#pragma unroll");
    e.line(format!(
        "for (int v = 0; v < {w}; ++v) {{ sh[v] = fx_shift[(c0 + v) / {per_group}]; s[v] = 0.0f; q[v] = 0.0f; }}"
    ));

    // The chunk's pixels: prologue, sums, prologue values stored.
    e.vectorize("i", "i0", w);
    e.line(format!(
        "const int p_end = min((int)(blockIdx.x + 1) * {}, {hw});",
        g.pixels_per_chunk
    ));
    e.open(format!(
        "for (int p = blockIdx.x * {} + threadIdx.x / {}; p < p_end; p += {rows})",
        g.pixels_per_chunk, g.slots
    ));
    e.line(format!("const int i0 = (b * {hw} + p) * {c} + c0;"));
    for j in 0..split.stored.len() {
        e.line(format!("float po{j}[{w}];"));
    }
    let mark = e.mark();
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    e.line("const int i = i0 + v;");
    let index = e.delinearize("i", dims.clone());
    let xv = e.value(x, &index)?;
    e.line(format!(
        "const float d = {xv} - sh[v]; s[v] += d; q[v] += d * d;"
    ));
    for (j, &out) in split.stored.iter().enumerate() {
        let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
        let v = e.stored_value(out, &out_index)?;
        e.line(format!("po{j}[v] = {v};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (j, &out) in split.stored.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, po{j});"));
    }
    e.close();

    // Per-group sums of the CTA (fx_s is [rows, C]), into its partials.
    e.line("#pragma unroll");
    e.line(format!(
        "for (int v = 0; v < {w}; ++v) {{ fx_s[threadIdx.x * {w} + v] = s[v]; fx_q[threadIdx.x * {w} + v] = q[v]; }}"
    ));
    e.line("__syncthreads();");
    e.open(format!(
        "for (int g = threadIdx.x; g < {groups}; g += {threads})"
    ));
    e.line("float gs = 0.0f, gq = 0.0f;");
    e.line(format!(
        "for (int r = 0; r < {rows}; ++r) for (int c = g * {per_group}; c < (g + 1) * {per_group}; ++c) {{ gs += fx_s[r * {c} + c]; gq += fx_q[r * {c} + c]; }}"
    ));
    e.line(format!(
        "const int at = ((b * {chunks} + blockIdx.x) * {groups} + g) * 2;"
    ));
    e.line(format!("p{partials}[at] = gs;"));
    e.line(format!("p{partials}[at + 1] = gq;"));
    e.close();

    // The last CTA of the image adds the chunks up, in order.
    e.line("__threadfence();");
    e.line("__syncthreads();");
    e.line(format!(
        "if (threadIdx.x == 0) fx_last = atomicAdd(s0 + b, 1u) == {chunks}u - 1u;"
    ));
    e.line("__syncthreads();");
    e.line("if (!fx_last) return;");
    e.line("__threadfence();");
    e.line("const int lane = threadIdx.x % 32;");
    e.open(format!(
        "for (int g = threadIdx.x / 32; g < {groups}; g += {})",
        threads / 32
    ));
    e.line("float gs = 0.0f, gq = 0.0f;");
    e.open(format!("for (int k = lane; k < {chunks}; k += 32)"));
    e.line(format!(
        "const int at = ((b * {chunks} + k) * {groups} + g) * 2;"
    ));
    e.line(format!(
        "gs += __ldcg(p{partials} + at); gq += __ldcg(p{partials} + at + 1);"
    ));
    e.close();
    e.line("gs = fx_group_sum(gs, 32);");
    e.line("gq = fx_group_sum(gq, 32);");
    e.open("if (lane == 0)");
    e.line(format!("const float mean = gs / {count};"));
    e.line(format!(
        "const float var = fmaxf(gq / {count} - mean * mean, 0.0f);"
    ));
    e.line(format!(
        "p{stats}[(b * {groups} + g) * 2] = fx_shift[g] + mean;"
    ));
    e.line(format!(
        "p{stats}[(b * {groups} + g) * 2 + 1] = rsqrtf(var + {});",
        float_literal(eps)
    ));
    e.close();
    e.close();
    e.line("if (threadIdx.x == 0) s0[b] = 0u;");

    let config = LaunchConfig {
        block_threads: threads,
        threads_per_row: 0,
    };
    let to_u32 = |v: usize| {
        u32::try_from(v).map_err(|_| CodegenError::TooLarge(format!("a grid of {v} blocks")))
    };
    finish_with_scratch(
        graph,
        e,
        &split.before,
        "group_stats",
        [to_u32(chunks)?, to_u32(g.batch)?, 1],
        config,
        Recipe::GroupStats(plan.clone()),
        to_u32(g.batch)?,
    )
}

/// The normalizing kernel of `plan`: a pointwise kernel over the norm, its
/// epilogue, and whatever prologue the statistics kernel did not store.
pub fn apply(
    graph: &Graph,
    plan: &GroupNormPlan,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    if let Some(c) = config {
        check_block(c.block_threads)?;
    }
    let split = prologue(graph, &plan.nodes, &plan.outputs, plan.norm);
    let computed: Vec<NodeId> = plan
        .nodes
        .iter()
        .copied()
        .filter(|n| split.downstream.contains(n) || !split.stored.contains(n))
        .collect();
    let outputs: Vec<NodeId> = plan
        .outputs
        .iter()
        .copied()
        .filter(|o| split.downstream.contains(o))
        .collect();
    let (x, _, _) = norm_parts(graph, plan.norm)?;
    check_outputs(graph, &outputs, elements(graph, x)?)?;
    pointwise_kernel(
        graph,
        &computed,
        &outputs,
        config,
        Recipe::GroupNormApply(plan.clone()),
        &[(plan.norm, plan.stats)],
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flux_vae_norms_spread_over_many_ctas() {
        // up_blocks.3 at 1024²: 128 bf16 channels, 16 threads a pixel.
        let g = Geometry::new(1, 1024 * 1024, 128, 32, 8).unwrap();
        assert_eq!((g.slots, g.rows, g.threads), (16, 16, 256));
        assert_eq!(g.chunks, MAX_CHUNKS);
        assert_eq!(g.pixels_per_chunk * g.chunks, 1024 * 1024);
        // The mid block: 512 channels at 128².
        let g = Geometry::new(1, 128 * 128, 512, 32, 8).unwrap();
        assert_eq!((g.slots, g.rows, g.threads), (64, 4, 256));
        assert_eq!(g.chunks, 1024);
        assert_eq!(g.pixels_per_chunk, 16);
        // tiny-vae: 32 f32 channels over 4×4 pixels, one chunk.
        let g = Geometry::new(1, 16, 32, 4, 4).unwrap();
        assert_eq!((g.slots, g.rows, g.threads, g.chunks), (8, 32, 256, 1));
        // Odd channel counts still give whole warps covering whole pixels.
        let g = Geometry::new(2, 50, 24, 4, 4).unwrap();
        assert_eq!(g.threads % 32, 0);
        assert_eq!(g.threads % g.slots, 0);
        assert!(g.pixels_per_chunk * g.chunks >= 50);
        assert!(g.pixels_per_chunk * (g.chunks - 1) < 50);
    }

    #[test]
    fn too_many_channels_are_a_clear_error() {
        let err = Geometry::new(1, 64, 16384, 32, 1).unwrap_err();
        assert!(err.to_string().contains("16384 channels"), "{err}");
    }
}
