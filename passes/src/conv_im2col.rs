//! conv_im2col: every convolution left after `conv1x1_as_mm` becomes an
//! im2col gather followed by a GEMM.
//!
//! A channels-last conv `y[N, Ho, Wo, Cout] = conv2d(x[N, H, W, Cin], w, b)`
//! is `linear(im2col(x), w', b)`: `im2col` gathers each output pixel's
//! `KH × KW` window of input pixels (zeros in the padding) into one row of
//! `KH·KW·Cin` values, tap by tap, each tap's `Cin` channels contiguous
//! (column `(ky·KW + kx)·Cin + c`), and `w'` is the weight with its input
//! channels moved last and flattened to match: `reshape(permute(w, [0, 2, 3,
//! 1]), [Cout, KH·KW·Cin])`. The permute and reshape read weights only, so
//! `hoist_weights` turns them into a load-time derivation of the stored
//! conv weight (nothing is copied into the graph), and the linear's output
//! already has the conv's `[N, Ho, Wo, Cout]` shape, so residual adds after
//! a conv fuse into the GEMM's epilogue like any linear's tail.
//!
//! Grouped convolutions (the FLUX VAE has none) are left as they are;
//! codegen reports them. An implicit-GEMM kernel (the gather done while
//! loading the GEMM's tiles, never materializing the patches) would save
//! the patch matrix's round trip through memory; im2col + cuBLASLt is the
//! simple, fast-enough first step.

use fluxc_ir::{Graph, IrError, Op};

/// Rewrites every ungrouped conv; returns how many.
pub fn conv_im2col(graph: &mut Graph) -> Result<usize, IrError> {
    let mut rewritten = 0;
    for id in graph.topo_order()? {
        let node = graph.node(id).clone();
        let Op::Conv2d {
            stride,
            padding,
            groups: 1,
        } = node.op
        else {
            continue;
        };
        let operands = graph.operands(id);
        let (x, w) = (operands[0], operands[1]);
        let [cout, cin, kh, kw]: [usize; 4] = graph
            .ty(w)
            .shape
            .dims()
            .try_into()
            .map_err(|_| IrError::Invalid(format!("conv weight of {}", graph.ty(w))))?;
        let patches = graph.add_node(
            Op::Im2col {
                kernel: [kh, kw],
                stride,
                padding,
            },
            &[x],
            &node.scope,
        )?;
        let taps_last = graph.add_node(Op::Permute(vec![0, 2, 3, 1]), &[w], &node.scope)?;
        let w2d = graph.add_node(
            Op::Reshape([cout, kh * kw * cin].into()),
            &[taps_last],
            &node.scope,
        )?;
        let mut linear_operands = vec![patches, w2d];
        linear_operands.extend(operands.get(2));
        let mm = graph.add_node(Op::Linear, &linear_operands, &node.scope)?;
        graph.replace_all_uses(id, mm)?;
        rewritten += 1;
    }
    graph.remove_dead_nodes();
    Ok(rewritten)
}
