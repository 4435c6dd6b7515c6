//! One-row linears that share an input become one linear: FLUX's 77
//! modulation linears (two per double block, one per single block, the
//! final norm's) all read the same conditioning vector, one row of 3072,
//! and each is a memory-bound product (6.5 GB of weights per forward in
//! all). Stacked, their weights stream through one launch at full
//! bandwidth (1.4 ms on the H200 against 2.4 ms for 77 launches whose last
//! waves leave the machine half idle). With one row there is no trade-off
//! for the e-graph's cost model to weigh (the stacked product reads exactly
//! the bytes the parts read), so every group of two or more is stacked,
//! directly.

use std::collections::BTreeMap;

use fluxc_ir::{DType, Graph, IrError, NodeId, Op};

use super::{biased_linears, common_scope};

/// Stacks the biased one-row linears of `graph` that share an input and
/// whose weights and biases are graph weights of one dtype; each becomes a
/// column slice of the stacked linear. Returns how many linears were
/// stacked.
pub fn stack_one_row_linears(graph: &mut Graph) -> Result<usize, IrError> {
    stack_linears(graph, |rows, count| rows == 1 && count >= 2)
}

/// [`stack_one_row_linears`] for the groups (input rows, linears in the
/// group) that `pick` selects.
pub(super) fn stack_linears(
    graph: &mut Graph,
    pick: impl Fn(usize, usize) -> bool,
) -> Result<usize, IrError> {
    // Candidates by (input, weight dtype, bias dtype), in topological order.
    let mut groups: BTreeMap<(NodeId, DType, DType), Vec<NodeId>> = BTreeMap::new();
    for l in biased_linears(graph)? {
        let [x, w, b] = <[NodeId; 3]>::try_from(graph.operands(l)).expect("biased linear");
        if graph.node(w).op.is_weight() && graph.node(b).op.is_weight() {
            let key = (x, graph.ty(w).dtype, graph.ty(b).dtype);
            groups.entry(key).or_default().push(l);
        }
    }
    let mut stacked = 0;
    for ((x, _, _), linears) in groups {
        let x_ty = graph.ty(x);
        let width = *x_ty.shape.dims().last().unwrap_or(&0);
        let rows = x_ty.shape.numel() / width.max(1);
        if width == 0 || !pick(rows, linears.len()) {
            continue;
        }
        let weights: Vec<NodeId> = linears.iter().map(|&l| graph.operands(l)[1]).collect();
        let biases: Vec<NodeId> = linears.iter().map(|&l| graph.operands(l)[2]).collect();
        let scope = common_scope(linears.iter().map(|&l| graph.node(l).scope.as_str()));
        let w = graph.add_node(Op::Concat { axis: 0 }, &weights, &scope)?;
        let b = graph.add_node(Op::Concat { axis: 0 }, &biases, &scope)?;
        let fused = graph.add_node(Op::Linear, &[x, w, b], &scope)?;
        let axis = graph.ty(fused).shape.rank() - 1;
        let mut start = 0;
        for (&l, &w) in linears.iter().zip(&weights) {
            let n = graph.ty(w).shape.dims()[0];
            let scope = graph.node(l).scope.clone();
            let op = Op::Slice {
                axis,
                start,
                end: start + n,
            };
            let part = graph.add_node(op, &[fused], &scope)?;
            graph.replace_all_uses(l, part)?;
            start += n;
        }
        stacked += linears.len();
    }
    graph.remove_dead_nodes();
    Ok(stacked)
}

#[cfg(test)]
mod tests {
    use fluxc_ir::interp::{self, Tensor};
    use fluxc_ir::GraphBuilder;
    use std::collections::HashMap;

    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    /// Three one-row linears of one input (one of them read twice), one of
    /// another input, and a many-row linear of the same width.
    fn graph() -> Graph {
        let mut b = GraphBuilder::new();
        let t = b.input("t", DType::F32, [1, 8]).unwrap();
        let u = b.input("u", DType::F32, [1, 8]).unwrap();
        let x = b.input("x", DType::F32, [4, 8]).unwrap();
        let mut outs = Vec::new();
        for (name, input, n) in [
            ("a", t, 6),
            ("b", t, 3),
            ("c", t, 5),
            ("d", u, 2),
            ("e", x, 7),
        ] {
            let w = b
                .weight(&format!("{name}.weight"), DType::F32, [n, 8])
                .unwrap();
            let bias = b.weight(&format!("{name}.bias"), DType::F32, [n]).unwrap();
            outs.push(b.linear(input, w, Some(bias)).unwrap());
        }
        let twice = b.mul(outs[1], outs[1]).unwrap();
        for (i, o) in outs.into_iter().chain([twice]).enumerate() {
            b.output(&format!("o{i}"), o).unwrap();
        }
        b.finish().unwrap()
    }

    fn inputs(g: &Graph) -> HashMap<String, Tensor> {
        g.inputs()
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let Op::Input { name, .. } = &g.node(id).op else {
                    unreachable!()
                };
                let dims = g.ty(id).shape.dims().to_vec();
                let n = g.ty(id).shape.numel();
                (
                    name.clone(),
                    Tensor::new(dims, values(n, i as f32)).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn stacks_one_row_linears_of_one_input_and_keeps_values() {
        let before = graph();
        let mut after = before.clone();
        assert_eq!(stack_one_row_linears(&mut after).unwrap(), 3);
        let linears = |g: &Graph| {
            g.live_nodes()
                .into_iter()
                .filter(|&id| g.node(id).op == Op::Linear)
                .count()
        };
        // a, b, c stacked; d (alone on its input) and e (four rows) kept.
        assert_eq!((linears(&before), linears(&after)), (5, 3));
        let stacked = after
            .live_nodes()
            .into_iter()
            .find(|&id| after.node(id).op == Op::Linear && after.ty(id).shape.dims() == [1, 14])
            .expect("a [1, 14] linear");
        assert_eq!(after.users(stacked).len(), 3);
        let x = inputs(&before);
        let (want, got) = (
            interp::run(&before, &x).unwrap(),
            interp::run(&after, &x).unwrap(),
        );
        for (name, w) in &want {
            assert_eq!(w.data, got[name].data, "{name}");
        }
    }
}
