//! Residuals folded into GEMMs. A GEMM whose whole tail is `r + y` takes r
//! as cuBLASLt's C (β = 1) and writes the sum: y's round trip through
//! memory and the add's launch go ([`find_residual`]; the FLUX VAE's ResNet
//! shortcuts).
//!
//! Gated residuals in fp8 GEMMs. FLUX.1 ends each attention and
//! MLP with `hidden + gate ⊙ linear(…)`: `gate` one value per output
//! channel (a slice of the modulation product), the linear an fp8 GEMM
//! with per-row scales and a bias. With `y = acc·sx·sw + b` (acc the fp8
//! product, sx per row, sw per channel),
//!
//! ```text
//! r + g ⊙ y  =  acc·sx·(g ⊙ sw) + (g ⊙ b) + r
//! ```
//!
//! which is one cuBLASLt call: the per-channel scale vector `g ⊙ sw`, the
//! bias `g ⊙ b` and C = r with β = 1 (its epilogue computes
//! `α·AB + β·C + bias`). A small kernel (`kernels/gate_scale.cu`) computes
//! the two vectors each forward, since the gate depends on the timestep:
//! one launch for up to [`GATE_BATCH`] residuals whose gates are ready
//! together ([`batch`]; FLUX's 114 gates all come from the one modulation
//! product: 2 launches, not 114).
//! Instead of the GEMM writing y and a pointwise kernel reading y and r to
//! write the sum, the GEMM reads r and writes the sum: y's round trip
//! through memory and a launch go. The sum is rounded once (the graph's
//! value rounds y, the product with g and the sum: the same up to a bf16
//! rounding step, as cuBLASLt's GELU epilogue is).

use std::collections::HashSet;

use fluxc_ir::{BinaryOp, DType, Graph, NodeId, Op};

use crate::lower::{storage_of, FixedLaunch, PendingStep};
use crate::Buf;

const TEMPLATE: &str = include_str!("../kernels/gate_scale.cu");

/// Threads per CTA of the gate kernel.
const THREADS: u32 = 256;

/// Residuals per gate launch at most: five pointers each, 2.5 KB of
/// parameters for 64, within the 4 KB every driver takes.
pub const GATE_BATCH: usize = 64;

/// A GEMM's tail that is a gated residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatedResidual {
    /// The sum `r + g ⊙ y`: what the GEMM writes instead of y.
    pub sum: NodeId,
    /// r: the GEMM's C (a materialized value of the sum's shape).
    pub residual: NodeId,
    /// The node whose buffer holds the gate, and the gate's first element
    /// in it.
    pub gate: (NodeId, u64),
}

/// `tail` (the nodes after the GEMM `product` in its fusion group, `outputs`
/// the ones stored) as a gated residual over `n` output channels: exactly
/// `add(r, mul(g, y))` in either operand order (and the slice that reads g
/// from a wider row vector), the sum its only output, y and the product
/// read by nothing else, g one bf16 value per channel.
pub fn find(
    graph: &Graph,
    product: NodeId,
    tail: &[NodeId],
    outputs: &[NodeId],
    n: u64,
) -> Option<GatedResidual> {
    let [sum] = outputs else { return None };
    let sum = *sum;
    let binary = |id: NodeId, op: BinaryOp| graph.node(id).op == Op::Binary(op);
    if !binary(sum, BinaryOp::Add) || graph.ty(sum).dtype != DType::BF16 {
        return None;
    }
    let in_tail = |id: NodeId| tail.contains(&id);
    let through = |id: NodeId| storage_of(graph, id);
    let add_operands = graph.operands(sum);
    let (mul, residual) = match (through(add_operands[0]), through(add_operands[1])) {
        (m, r) if binary(m, BinaryOp::Mul) && in_tail(m) && !in_tail(r) => (m, r),
        (r, m) if binary(m, BinaryOp::Mul) && in_tail(m) && !in_tail(r) => (m, r),
        _ => return None,
    };
    // r must be a value of its own (not y itself: the GEMM writes the sum
    // instead of y).
    if residual == product
        || graph.ty(residual).shape != graph.ty(sum).shape
        || graph.ty(residual).dtype != DType::BF16
    {
        return None;
    }
    let mul_operands = graph.operands(mul);
    let gate = match (through(mul_operands[0]), through(mul_operands[1])) {
        (p, g) if p == product => g,
        (g, p) if p == product => g,
        _ => return None,
    };
    // y feeds only the product with the gate, which feeds only the sum.
    if !read_only_by(graph, product, mul) || !read_only_by(graph, mul, sum) {
        return None;
    }
    let g = graph.ty(gate);
    if g.dtype != DType::BF16
        || g.shape.numel() as u64 != n
        || g.shape.dims().last() != Some(&(n as usize))
    {
        return None;
    }
    // The rest of the tail is the gate's slice, if any.
    let gate_at = match &graph.node(gate).op {
        Op::Slice {
            axis,
            start,
            end: _,
        } if in_tail(gate) => {
            let source = storage_of(graph, graph.operands(gate)[0]);
            let dims = graph.ty(source).shape.dims();
            // Contiguous only when every axis before the sliced one is 1
            // and it is the last.
            if *axis + 1 != dims.len() || dims[..*axis].iter().any(|&d| d != 1) {
                return None;
            }
            (source, *start as u64)
        }
        _ if in_tail(gate) => return None,
        _ => (gate, 0),
    };
    // Nothing else in the tail (reshapes are views, not work).
    let work = tail.iter().filter(|&&id| !is_reshape(graph, id)).count();
    if work != if in_tail(gate) { 3 } else { 2 } {
        return None;
    }
    Some(GatedResidual {
        sum,
        residual,
        gate: gate_at,
    })
}

/// `tail` as a plain residual `r + y` (a VAE ResNet block's shortcut):
/// the sum its only output and its only work, y read by nothing else, r a
/// value of the sum's shape and type from outside the tail. Returns (sum,
/// r).
pub fn find_residual(
    graph: &Graph,
    product: NodeId,
    tail: &[NodeId],
    outputs: &[NodeId],
) -> Option<(NodeId, NodeId)> {
    let [sum] = outputs else { return None };
    let sum = *sum;
    if graph.node(sum).op != Op::Binary(BinaryOp::Add) {
        return None;
    }
    if tail.iter().filter(|&&id| !is_reshape(graph, id)).count() != 1 {
        return None;
    }
    let operands = graph.operands(sum);
    let residual = match (
        storage_of(graph, operands[0]),
        storage_of(graph, operands[1]),
    ) {
        (p, r) if p == product => r,
        (r, p) if p == product => r,
        _ => return None,
    };
    let (r, s) = (graph.ty(residual), graph.ty(sum));
    let only_user = read_only_by(graph, product, sum);
    (residual != product
        && !tail.contains(&residual)
        && r.shape == s.shape
        && r.dtype == s.dtype
        && s.dtype == graph.ty(product).dtype
        && only_user)
        .then_some((sum, residual))
}

fn is_reshape(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::Reshape(_))
}

/// Whether `user` is the only reader of `id` (directly or through reshapes).
fn read_only_by(graph: &Graph, id: NodeId, user: NodeId) -> bool {
    graph
        .users(id)
        .iter()
        .all(|&(u, _)| u == user || (is_reshape(graph, u) && read_only_by(graph, u, user)))
}

/// The launch of the gate kernel for residuals of `ns` channels each (at
/// most [`GATE_BATCH`]): `blockIdx.y` picks the residual, the grid's x
/// covers the widest.
pub fn render(ns: &[u64]) -> Result<FixedLaunch, String> {
    let widest = ns.iter().copied().max().unwrap_or(0);
    let ctas = u32::try_from(widest.div_ceil(u64::from(THREADS)))
        .map_err(|_| format!("a gated residual over {widest} channels"))?;
    let rows = u32::try_from(ns.len())
        .ok()
        .filter(|&r| r > 0 && r as usize <= GATE_BATCH)
        .ok_or_else(|| format!("{} gated residuals in one launch", ns.len()))?;
    let mut params = Vec::new();
    let mut cases = String::new();
    for (r, &n) in ns.iter().enumerate() {
        let n = i32::try_from(n).map_err(|_| format!("a gated residual over {n} channels"))?;
        params.push(format!(
            "const float* __restrict__ w{r}, const __nv_bfloat16* __restrict__ b{r}, \
             const __nv_bfloat16* __restrict__ g{r}, float* __restrict__ s{r}, \
             __nv_bfloat16* __restrict__ o{r}"
        ));
        cases.push_str(&format!(
            "        case {r}: w_scale = w{r}; b = b{r}; gate = g{r}; scale = s{r}; bias = o{r}; \
             n = {n}; break;\n"
        ));
    }
    // One name per distinct source: the residual count, and their channel
    // count when they share one.
    let name = match ns {
        [first, rest @ ..] if rest.iter().all(|n| n == first) => {
            format!("gate_scale_{}x{first}", ns.len())
        }
        _ => format!(
            "gate_scale_{}",
            ns.iter().map(u64::to_string).collect::<Vec<_>>().join("_")
        ),
    };
    let source = TEMPLATE
        .replace("{{NAME}}", &name)
        .replace("{{PARAMS}}", &params.join(",\n        "))
        .replace("{{CASES}}", cases.trim_end_matches('\n'));
    Ok(FixedLaunch {
        name,
        source,
        grid: [ctas.max(1), rows, 1],
        threads: THREADS,
        shared_bytes: 0,
    })
}

/// Merges the gate steps of `steps` (one residual each, as lowering makes
/// them) into launches of up to [`GATE_BATCH`] residuals, each at the place
/// of the first step it takes: a step joins the open batch when nothing
/// from the batch's place up to the step writes what it reads (in FLUX the
/// gates, biases and weight scales are all ready before the first gated
/// GEMM). Every other step keeps its order; a batch's outputs are written
/// no later than before.
pub fn batch(steps: Vec<PendingStep>) -> Result<Vec<PendingStep>, String> {
    let mut out: Vec<PendingStep> = Vec::with_capacity(steps.len());
    // The open batch's index in `out`, and what `out` wrote after it.
    let mut open: Option<usize> = None;
    let mut written: HashSet<Buf> = HashSet::new();
    for step in steps {
        let PendingStep::GateScale { jobs, .. } = &step else {
            written.extend(step.writes());
            out.push(step);
            continue;
        };
        let ready = !step.reads().iter().any(|b| written.contains(b));
        match open.map(|at| &mut out[at]) {
            Some(PendingStep::GateScale { jobs: taken, .. })
                if ready && taken.len() + jobs.len() <= GATE_BATCH =>
            {
                taken.extend_from_slice(jobs);
            }
            _ => {
                open = Some(out.len());
                written.clear();
                out.push(step);
            }
        }
    }
    for step in &mut out {
        if let PendingStep::GateScale { kernel, jobs } = step {
            let ns: Vec<u64> = jobs.iter().map(|j| j.n).collect();
            *kernel = render(&ns)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_case_per_residual() {
        let k = render(&[3072; GATE_BATCH]).unwrap();
        assert_eq!(k.name, "gate_scale_64x3072");
        assert_eq!(k.grid, [12, 64, 1]);
        assert!(!k.source.contains("{{"));
        assert_eq!(k.source.matches("; break;").count(), 64);
        assert!(k.source.contains(
            "case 63: w_scale = w63; b = b63; gate = g63; scale = s63; bias = o63; n = 3072; break;"
        ));
        assert!(k.source.contains("__nv_bfloat16* __restrict__ o63) {"));
        // Channel counts that differ name the kernel by all of them; the
        // grid covers the widest.
        let mixed = render(&[3072, 100]).unwrap();
        assert_eq!(mixed.name, "gate_scale_3072_100");
        assert_eq!(mixed.grid, [12, 2, 1]);
        assert!(render(&[]).is_err());
        assert!(render(&[8; GATE_BATCH + 1]).is_err());
    }
}
