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

use fluxc_ir::{DType, Graph, NodeId, Op};

use crate::emit::{float_literal, Emitter, Index, Param};
use crate::CodegenError;

/// Threads per block of every generated kernel.
pub const BLOCK_THREADS: u32 = 256;

/// Placeholder for the kernel name in rendered sources.
pub const NAME: &str = "{{NAME}}";

/// A rendered kernel, before it is named.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSource {
    /// The source with [`NAME`] in place of the name.
    pub source: String,
    /// Its parameters, in declaration order.
    pub params: Vec<Param>,
    /// Grid size.
    pub grid: [u32; 3],
    /// Block size.
    pub block: [u32; 3],
    /// Op kinds it computes, in order (for its name).
    pub ops: Vec<&'static str>,
}

/// A pointwise kernel computing `nodes` and writing `outputs`, one thread
/// per element of `outputs[0]`'s shape (all outputs have that many elements).
pub fn pointwise(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
) -> Result<KernelSource, CodegenError> {
    let total = elements(graph, outputs[0])?;
    check_outputs(graph, outputs, total)?;
    let mut e = Emitter::new(graph, nodes.iter().copied(), 1);
    let width = vector_width(graph, outputs).filter(|w| total % w == 0);
    let Some(w) = width else {
        e.line(format!(
            "const int i = blockIdx.x * {BLOCK_THREADS} + threadIdx.x;"
        ));
        e.line(format!("if (i >= {total}) return;"));
        for &out in outputs {
            let dims = graph.ty(out).shape.dims().to_vec();
            let index = e.delinearize("i", dims);
            let v = e.value(out, &index)?;
            e.store(out, "i", &v);
        }
        let grid = grid_for(total, BLOCK_THREADS as usize)?;
        return finish(graph, e, nodes, "", [grid, 1, 1]);
    };
    // Vectorized: each thread computes `w` consecutive elements; operands
    // read at the element's own index come in one 16-byte load, outputs go
    // out in one 16-byte store.
    e.line(format!(
        "const int i0 = (blockIdx.x * {BLOCK_THREADS} + threadIdx.x) * {w};"
    ));
    e.line(format!("if (i0 >= {total}) return;"));
    for k in 0..outputs.len() {
        e.line(format!("float o{k}[{w}];"));
    }
    e.vectorize("i", "i0", w);
    let mark = e.mark();
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    e.line("const int i = i0 + v;");
    for (k, &out) in outputs.iter().enumerate() {
        let dims = graph.ty(out).shape.dims().to_vec();
        let index = e.delinearize("i", dims);
        let v = e.value(out, &index)?;
        e.line(format!("o{k}[v] = {v};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (k, &out) in outputs.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, o{k});"));
    }
    let grid = grid_for(total / w, BLOCK_THREADS as usize)?;
    finish(graph, e, nodes, "", [grid, 1, 1])
}

/// Elements per 16-byte access when every output has the same element size
/// (8 for bf16/f16, 4 for f32).
fn vector_width(graph: &Graph, outputs: &[NodeId]) -> Option<usize> {
    let size = graph.ty(*outputs.first()?).dtype.size_bytes();
    let same = outputs
        .iter()
        .all(|&o| graph.ty(o).dtype.size_bytes() == size);
    (same && (size == 2 || size == 4)).then_some(16 / size)
}

fn grid_for(items: usize, per_block: usize) -> Result<u32, CodegenError> {
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
    /// 256) that split its chunks evenly, or 256 with a ragged last chunk.
    pub fn for_width(c: usize, width: usize) -> RowShape {
        let chunks = c / width;
        let mut tpr = 1usize;
        while tpr < 256 && chunks % (tpr * 2) == 0 {
            tpr *= 2;
        }
        if chunks / tpr > 8 {
            tpr = 256;
        }
        RowShape {
            width: width as u32,
            tpr: tpr as u32,
            chunks_per_thread: chunks.div_ceil(tpr) as u32,
            rows_per_block: BLOCK_THREADS / tpr as u32,
        }
    }
}

/// A row kernel for `reduction` (a LayerNorm, RMSNorm or softmax over the
/// last axis) with the rest of `nodes` as prologue and epilogue.
pub fn row(
    graph: &Graph,
    nodes: &[NodeId],
    outputs: &[NodeId],
    reduction: NodeId,
) -> Result<KernelSource, CodegenError> {
    let r = graph.node(reduction).clone();
    let r_operands = graph.operands(reduction);
    let x = r_operands[0];
    let dims = graph.ty(x).shape.dims().to_vec();
    let c = *dims.last().unwrap_or(&1);
    let total = elements(graph, x)?;
    let rows = total / c;
    check_outputs(graph, outputs, total)?;
    let width = vector_width(graph, outputs)
        .filter(|w| c % w == 0)
        .unwrap_or(1);
    let shape = RowShape::for_width(c, width);
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
        outputs.iter().partition(|o| downstream.contains(o));
    let needs_pair = rope_reads(graph, nodes, reduction);
    if needs_pair && c % 2 != 0 {
        return Err(CodegenError::Unsupported(format!(
            "rotary pairs over an odd width {c}"
        )));
    }

    let mut e = Emitter::new(graph, nodes.iter().copied(), 1);
    if tpr > 32 {
        e.line(format!(
            "__shared__ float fx_scratch[{}];",
            BLOCK_THREADS / 32
        ));
    }
    e.line(format!(
        "const int row = blockIdx.x * {rpb} + threadIdx.x / {tpr};"
    ));
    e.line(format!("const int lane = threadIdx.x % {tpr};"));
    e.line(format!("const bool active = row < {rows};"));
    e.line(format!("float x[{}];", cpt * w));
    e.vectorize("i", "i0", w);
    e.vectorize("c", "c0", w);

    // Prologue: the reduced operand into registers, prologue outputs stored.
    e.line("#pragma unroll");
    e.open(format!("for (int k = 0; k < {cpt}; ++k)"));
    e.line(format!("const int chunk = lane + k * {tpr};"));
    e.line(format!(
        "for (int v = 0; v < {w}; ++v) x[k * {w} + v] = 0.0f;"
    ));
    e.open(format!("if (active && chunk < {chunks})"));
    e.line(format!("const int c0 = chunk * {w};"));
    e.line(format!("const int i0 = row * {c} + c0;"));
    for j in 0..prologue_outs.len() {
        e.line(format!("float po{j}[{w}];"));
    }
    let mark = e.mark();
    element_loop_header(&mut e, w, c);
    let index = e.delinearize("i", dims.clone());
    let xv = e.value(x, &index)?;
    e.line(format!("x[k * {w} + v] = {xv};"));
    for (j, &out) in prologue_outs.iter().enumerate() {
        let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
        let v = e.value(out, &out_index)?;
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
    let reduce = |kind: &str, v: &str| {
        if tpr > 32 {
            format!("fx_row_{kind}({v}, {tpr}, fx_scratch)")
        } else {
            format!("fx_group_{kind}({v}, {tpr})")
        }
    };
    let over = |body: &str| {
        format!(
            "for (int k = 0; k < {cpt}; ++k) if (lane + k * {tpr} < {chunks}) for (int v = 0; v < {w}; ++v) {{ const float xe = x[k * {w} + v]; {body} }}"
        )
    };
    let sum_over = |e: &mut Emitter, name: &str, term: &str| {
        e.line(format!("float {name} = 0.0f;"));
        e.line("#pragma unroll");
        e.line(over(&format!("{name} += {term};")));
        e.line(format!("{name} = {};", reduce("sum", name)));
    };
    let normalized = match &r.op {
        Op::LayerNorm { eps } => {
            sum_over(&mut e, "sum", "xe");
            e.line(format!("const float mean = sum / {c}.0f;"));
            sum_over(&mut e, "sq", "(xe - mean) * (xe - mean)");
            e.line(format!(
                "const float rstd = rsqrtf(sq / {c}.0f + {});",
                float_literal(eps.get())
            ));
            "(x[k * W + v] - mean) * rstd"
        }
        Op::RmsNorm { eps } => {
            sum_over(&mut e, "sq", "xe * xe");
            e.line(format!(
                "const float rstd = rsqrtf(sq / {c}.0f + {});",
                float_literal(eps.get())
            ));
            "x[k * W + v] * rstd"
        }
        Op::Softmax => {
            e.line("float mx = -__int_as_float(0x7f800000);");
            e.line("#pragma unroll");
            e.line(over("mx = fmaxf(mx, xe);"));
            e.line(format!("mx = {};", reduce("max", "mx")));
            sum_over(&mut e, "sum", "expf(xe - mx)");
            "expf(x[k * W + v] - mx) / sum"
        }
        other => {
            return Err(CodegenError::Unsupported(format!(
                "{} as a row reduction",
                other.kind_name()
            )))
        }
    };
    let normalized = normalized.replace('W', &w.to_string());

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
    e.open("if (ok)");
    let mark = e.mark();
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    e.line("const int c = c0 + v;");
    let mut y = normalized;
    let c_index: Index = vec!["c".to_string()];
    if let Some(&wt) = r_operands.get(1) {
        let wv = e.value(wt, &c_index)?;
        y = format!("({y}) * {wv}");
    }
    if let Some(&b) = r_operands.get(2) {
        let bv = e.value(b, &c_index)?;
        y = format!("{y} + {bv}");
    }
    e.line(format!("y[v] = {y};"));
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    e.close();
    if needs_pair && w == 1 {
        e.line("const float y_pair = __shfl_xor_sync(0xffffffffu, y[0], 1);");
    }
    e.open("if (ok)");
    e.line(format!("const int i0 = row * {c} + c0;"));
    for j in 0..epilogue_outs.len() {
        e.line(format!("float eo{j}[{w}];"));
    }
    let mark = e.mark();
    element_loop_header(&mut e, w, c);
    let r_dims = graph.ty(reduction).shape.dims().to_vec();
    let r_index = e.delinearize("i", r_dims.clone());
    e.provide(reduction, &r_index, "y[v]".to_string());
    if needs_pair {
        let mut pair_index = r_index.clone();
        let last = r_dims.len() - 1;
        pair_index[last] = e.bind_index(format!("{} ^ 1", r_index[last]));
        let pair = if w == 1 { "y_pair" } else { "y[v ^ 1]" };
        e.provide(reduction, &pair_index, pair.to_string());
    }
    for (j, &out) in epilogue_outs.iter().enumerate() {
        let out_index = e.delinearize("i", graph.ty(out).shape.dims().to_vec());
        let v = e.value(out, &out_index)?;
        e.line(format!("eo{j}[v] = {v};"));
    }
    e.close();
    let loads = e.take_vector_loads();
    e.insert(mark, loads);
    for (j, &out) in epilogue_outs.iter().enumerate() {
        let p = e.param(out, true);
        e.line(format!("fx_vstore<{w}>(p{p}, i0, eo{j});"));
    }
    e.close();
    e.close();

    let grid = grid_for(rows, rpb as usize)?;
    finish(graph, e, nodes, r.op.kind_name(), [grid, 1, 1])
}

/// Opens the per-element loop of a row chunk: `v` over the chunk, `i` the
/// element's linear index and `c` its position in the row (`i % c` is `c`).
fn element_loop_header(e: &mut Emitter, w: usize, c: usize) {
    e.line("#pragma unroll");
    e.open(format!("for (int v = 0; v < {w}; ++v)"));
    e.line("const int i = i0 + v;");
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
fn downstream_of(graph: &Graph, nodes: &[NodeId], root: NodeId) -> HashSet<NodeId> {
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

fn elements(graph: &Graph, node: NodeId) -> Result<usize, CodegenError> {
    let n = graph.ty(node).shape.numel();
    if n > i32::MAX as usize {
        return Err(CodegenError::TooLarge(format!(
            "{} has {n} elements; kernels index with 32-bit integers",
            graph.ty(node)
        )));
    }
    Ok(n)
}

fn check_outputs(graph: &Graph, outputs: &[NodeId], total: usize) -> Result<(), CodegenError> {
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
    mut e: Emitter,
    nodes: &[NodeId],
    anchor_kind: &str,
    grid: [u32; 3],
) -> Result<KernelSource, CodegenError> {
    let body = drop_unused_indices(e.take_lines());
    let params = e.params().to_vec();
    let mut signature = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let ty = c_type(graph.ty(p.node).dtype)?;
        let constness = if p.written { "" } else { "const " };
        signature.push(format!("{constness}{ty}* __restrict__ p{i}"));
    }
    let mut source = format!(
        "extern \"C\" __global__ void __launch_bounds__({BLOCK_THREADS}) {NAME}({}) {{\n",
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
        block: [BLOCK_THREADS, 1, 1],
        ops,
    })
}

/// Removes `const int tN = ...;` lines whose variable nothing reads (index
/// components computed for a shape but never needed), to a fixpoint.
fn drop_unused_indices(mut lines: Vec<String>) -> Vec<String> {
    loop {
        let text = lines.join("\n");
        let unused = |line: &String| {
            let decl = line.trim_start().strip_prefix("const int t")?;
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
        _ => "row",
    }
}

/// The CUDA type of a storage dtype.
pub fn c_type(dtype: DType) -> Result<&'static str, CodegenError> {
    match dtype {
        DType::F32 => Ok("float"),
        DType::BF16 => Ok("__nv_bfloat16"),
        DType::F16 => Ok("__half"),
        other => Err(CodegenError::Unsupported(format!(
            "{other} tensors in generated kernels (fp8 kernels come with the fp8 issue)"
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
        // Scalar fallback over an odd width.
        let odd = RowShape::for_width(3000, 1);
        assert_eq!((odd.tpr, odd.chunks_per_thread), (256, 12));
    }
}
