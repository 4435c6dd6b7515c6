//! conv_1x1_as_mm: a 1×1, stride-1, unpadded, ungrouped convolution is a
//! matmul over channels.
//!
//! Image tensors are channels-last (`[N, H, W, C]`), so the input already is
//! a `[N·H·W, Cin]` matrix in memory: the conv becomes a `linear` over the
//! same data with the weight viewed as `[Cout, Cin]` (a reshape of a weight,
//! done at load time), and no activation moves. This is Inductor's
//! `conv_1x1_as_mm`; in the FLUX VAE it turns the mid-block attention's
//! projections and the shortcut convs into GEMMs.

use fluxc_ir::{Graph, IrError, Op};

/// Rewrites every eligible conv; returns how many.
pub fn conv1x1_as_mm(graph: &mut Graph) -> Result<usize, IrError> {
    let mut rewritten = 0;
    for id in graph.topo_order()? {
        let node = graph.node(id).clone();
        let Op::Conv2d {
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
        } = node.op
        else {
            continue;
        };
        let operands = graph.operands(id);
        let w = operands[1];
        let wdims = graph.ty(w).shape.dims().to_vec();
        if wdims[2..] != [1, 1] {
            continue;
        }
        let w2d = graph.add_node(Op::Reshape([wdims[0], wdims[1]].into()), &[w], &node.scope)?;
        let mut linear_operands = vec![operands[0], w2d];
        linear_operands.extend(operands.get(2));
        let mm = graph.add_node(Op::Linear, &linear_operands, &node.scope)?;
        graph.replace_all_uses(id, mm)?;
        rewritten += 1;
    }
    graph.remove_dead_nodes();
    Ok(rewritten)
}
