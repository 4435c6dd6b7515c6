//! Small hand-built graphs that more than one test binary compiles.

use fluxc::ir::{DType, Graph, GraphBuilder};

/// FLUX's single-block output projection over `rows` rows:
/// `proj_out(concat(a, GELU(m)))` with `a` `[rows, left]` and `m` `[rows,
/// right]` (or, without `gelu`, `proj_out(m)` alone), `n` outputs, no bias,
/// in scope `single_transformer_blocks.0` (so the default fp8 policy
/// quantizes it).
pub fn single_block_projection(
    rows: usize,
    left: usize,
    right: usize,
    n: usize,
    gelu: bool,
) -> Graph {
    let mut b = GraphBuilder::new();
    let a = b.input("a", DType::BF16, [rows, left]).unwrap();
    let m = b.input("m", DType::BF16, [rows, right]).unwrap();
    b.push_scope("single_transformer_blocks.0");
    let x = if gelu {
        let g = b.gelu_tanh(m).unwrap();
        b.concat(&[a, g], 1).unwrap()
    } else {
        m
    };
    let width = b.shape(x)[1];
    let w = b
        .weight("proj_out.weight", DType::BF16, [n, width])
        .unwrap();
    let y = b.linear(x, w, None).unwrap();
    b.pop_scope();
    b.output("out", y).unwrap();
    b.finish().unwrap()
}

/// `x · wᵀ (+ b)` over one input row of `k` features, `n` outputs: FLUX's
/// modulation linears' shape.
pub fn one_row_linear(k: usize, n: usize, with_bias: bool) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [1, k]).unwrap();
    let w = b.weight("proj.weight", DType::BF16, [n, k]).unwrap();
    let bias = with_bias.then(|| b.weight("proj.bias", DType::BF16, [n]).unwrap());
    let y = b.linear(x, w, bias).unwrap();
    b.output("out", y).unwrap();
    b.finish().unwrap()
}
