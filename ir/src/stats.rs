//! Counting: ops by kind, parameters, and FLOPs per forward.
//!
//! FLOPs count multiply and add separately (2 per multiply-accumulate), the
//! convention of published TFLOP/s figures: a linear is `2·M·N·K`, attention is
//! `4·B·H·Sq·Sk·D` (QKᵀ and PV), in bf16 or fp8 (`ScaledAttention` counts as
//! attention, as `ScaledLinear` counts as a GEMM). Memory-bound ops are not
//! counted: they are priced in bytes, not FLOPs.

use std::collections::BTreeMap;

use crate::{Graph, Op};

/// Summary figures of a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Number of nodes per op kind name (inputs and weights included).
    pub ops_by_kind: BTreeMap<&'static str, usize>,
    /// Number of weight tensors.
    pub weight_tensors: usize,
    /// Total elements over all weights.
    pub parameters: u64,
    /// Total bytes of all weights at their declared dtypes.
    pub weight_bytes: u64,
    /// FLOPs of `linear` and `matmul` nodes.
    pub gemm_flops: u64,
    /// FLOPs of `conv2d` nodes.
    pub conv_flops: u64,
    /// FLOPs of `attention` and `scaled_attention` nodes.
    pub attention_flops: u64,
}

impl GraphStats {
    /// Counts everything in `graph`.
    pub fn of(graph: &Graph) -> GraphStats {
        let mut stats = GraphStats::default();
        for id in graph.node_ids() {
            let node = graph.node(id);
            *stats.ops_by_kind.entry(node.op.kind_name()).or_default() += 1;
            if node.op.is_weight() {
                stats.weight_tensors += 1;
                stats.parameters += node.ty.shape.numel() as u64;
                stats.weight_bytes += node.ty.size_bytes() as u64;
            }
            let flops = node_flops(graph, id);
            match node.op {
                Op::Linear | Op::MatMul | Op::ScaledLinear { .. } => stats.gemm_flops += flops,
                Op::Conv2d { .. } => stats.conv_flops += flops,
                Op::Attention { .. } | Op::ScaledAttention { .. } => stats.attention_flops += flops,
                _ => {}
            }
        }
        stats
    }

    /// Number of nodes whose op kind name is `kind` (0 when there are none).
    pub fn ops(&self, kind: &str) -> usize {
        self.ops_by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Number of nodes that are neither inputs nor weights.
    pub fn compute_ops(&self) -> usize {
        self.ops_by_kind
            .iter()
            .filter(|(k, _)| !matches!(**k, "input" | "weight"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// FLOPs of one node (0 for ops that are not matrix products or attention).
pub fn node_flops(graph: &Graph, id: crate::NodeId) -> u64 {
    let node = graph.node(id);
    let out = &node.ty.shape;
    let operands = graph.operands(id);
    match &node.op {
        Op::Linear | Op::ScaledLinear { .. } => {
            // out [.., N] = x [.., K] · w[N, K]ᵀ
            let k = graph.ty(operands[0]).shape.last().unwrap_or(0) as u64;
            2 * out.numel() as u64 * k
        }
        Op::MatMul => {
            let a = &graph.ty(operands[0]).shape;
            let k = a.last().unwrap_or(0) as u64;
            2 * out.numel() as u64 * k
        }
        Op::Conv2d { .. } => {
            // out [N, Ho, Wo, Cout]; each output sums Cin/groups · KH · KW
            // products, which is the weight's per-output-channel size.
            let w = &graph.ty(operands[1]).shape;
            let per_output = (w.dims()[1] * w.dims()[2] * w.dims()[3]) as u64;
            2 * out.numel() as u64 * per_output
        }
        Op::Attention { .. } | Op::ScaledAttention { .. } => {
            // q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, Dv]; a scaled
            // attention interleaves a scale after each of them.
            let k_at = if matches!(node.op, Op::Attention { .. }) {
                1
            } else {
                2
            };
            let q = graph.ty(operands[0]).shape.dims();
            let k = graph.ty(operands[k_at]).shape.dims();
            let dv = out.dims()[3] as u64;
            let (b, sq, h, d, sk) = (
                q[0] as u64,
                q[1] as u64,
                q[2] as u64,
                q[3] as u64,
                k[1] as u64,
            );
            2 * b * h * sq * sk * d + 2 * b * h * sq * sk * dv
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    #[test]
    fn counts_linear_attention_and_parameters() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::BF16, [1, 10, 8]).unwrap();
        let w = b.weight("w", DType::BF16, [6, 8]).unwrap();
        let bias = b.weight("b", DType::BF16, [6]).unwrap();
        let y = b.linear(x, w, Some(bias)).unwrap();
        let q = b.reshape(y, [1, 10, 2, 3]).unwrap();
        let o = b.attention(q, q, q).unwrap();
        b.output("o", o).unwrap();
        let s = GraphStats::of(&b.finish().unwrap());
        assert_eq!(s.parameters, 54);
        assert_eq!(s.weight_bytes, 108);
        assert_eq!(s.weight_tensors, 2);
        assert_eq!(s.gemm_flops, 2 * 10 * 6 * 8);
        assert_eq!(s.attention_flops, 4 * 2 * 10 * 10 * 3);
        assert_eq!(s.ops_by_kind["linear"], 1);
        assert_eq!(s.compute_ops(), 3);
    }

    #[test]
    fn scaled_attention_counts_as_attention() {
        let mut b = GraphBuilder::new();
        let q = b.input("q", DType::BF16, [2, 10, 3, 4]).unwrap();
        let kv = b.input("kv", DType::BF16, [2, 7, 3, 4]).unwrap();
        let mut quantized = Vec::new();
        for x in [q, kv] {
            let s = b.dynamic_scale(x, DType::F8E4M3, false).unwrap();
            let x8 = b.quantize(x, s, DType::F8E4M3).unwrap();
            quantized.extend([x8, s]);
        }
        let [q8, qs, k8, ks] = quantized[..] else {
            unreachable!()
        };
        // v goes in unquantized, with its scale (the op quantizes it).
        let o = b.scaled_attention(q8, qs, k8, ks, kv, ks, 0.5).unwrap();
        b.output("o", o).unwrap();
        let s = GraphStats::of(&b.finish().unwrap());
        // 2·B·H·Sq·Sk·(D + Dv)
        assert_eq!(s.attention_flops, 2 * 2 * 3 * 10 * 7 * (4 + 4));
        assert_eq!(s.gemm_flops, 0);
        assert_eq!(s.ops_by_kind["scaled_attention"], 1);
    }
}
