//! Tests of the fp8 insertion pass (`fluxc_passes::fp8::insert_fp8`).
//!
//! Small graphs are built with scopes as the FLUX builder names them
//! (`transformer_blocks.0.attn.to_q`, `transformer_blocks.0.norm1.linear`,
//! ...). Checked: the default policy selects the block linears and skips
//! the adaLN modulation linears and linears outside the blocks; custom
//! include/exclude globs; `Off` leaves the graph untouched; both modes build
//! the expected ops (kinds, attributes, operand order, shapes, dtypes,
//! scopes); a tensor feeding several linears is quantized once; the weight
//! side reads only weights; linears already in fp8 are skipped; the graph
//! verifies afterwards; interpreting before and after on random data agrees
//! within 5% relative L2 for one quantized linear (errors add up over a
//! chain of them, so the whole toy graph gets a wider bound); a bad glob is an error and leaves the graph as is.

use std::collections::{BTreeMap, HashMap};

use fluxc_ir::interp::{self, Tensor};
use fluxc_ir::{print_graph, verify, DType, Graph, GraphBuilder, IrError, NodeId, Op};
use fluxc_passes::fp8::{insert_fp8, ScopeSelector, FP8_DTYPE, ONE_ROW_MIN_WEIGHTS};
use fluxc_passes::{Fp8Mode, Fp8Policy};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random values in `[-1, 1)` (an LCG; no dependencies).
fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A random tensor for every input of `graph` (weights included).
fn random_feeds(graph: &Graph, seed: u32) -> HashMap<String, Tensor> {
    let mut feeds = HashMap::new();
    for (i, id) in graph.inputs().into_iter().enumerate() {
        let Op::Input { name, .. } = &graph.node(id).op else {
            unreachable!("inputs() lists inputs")
        };
        let shape = graph.ty(id).shape.clone();
        let data = pseudo_random(shape.numel(), seed + i as u32);
        feeds.insert(name.clone(), Tensor::new(shape, data).unwrap());
    }
    feeds
}

/// Adds a linear named `scope` (the scope the builder gives a module's
/// linear) with weight `[n, K]` and optional bias, reading `x`.
fn linear(b: &mut GraphBuilder, scope: &str, x: NodeId, n: usize, bias: bool) -> NodeId {
    let k = *b.shape(x).last().unwrap();
    let dtype = b.ty(x).dtype;
    b.push_scope(scope);
    let w = b.weight(&format!("{scope}.weight"), dtype, [n, k]).unwrap();
    let bias = bias.then(|| b.weight(&format!("{scope}.bias"), dtype, [n]).unwrap());
    let y = b.linear(x, w, bias).unwrap();
    b.pop_scope();
    y
}

/// Scopes of the block linears the default policy quantizes.
const SELECTED: [&str; 6] = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.ff.net.2",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.0.proj_out",
];

/// Scopes of the linears it leaves alone: the modulation linears and the
/// linears outside the blocks.
const NOT_SELECTED: [&str; 6] = [
    "time_text_embed.timestep_embedder.linear_1",
    "transformer_blocks.0.norm1.linear",
    "transformer_blocks.0.norm1_context.linear",
    "single_transformer_blocks.0.norm.linear",
    "norm_out.linear",
    "proj_out",
];

/// A toy FLUX-shaped graph in `dtype`: a timestep MLP, block modulation
/// linears (one row), q/k/v sharing their input, a feed-forward and a
/// single block, and the final norm and projection.
fn toy_flux(dtype: DType) -> Graph {
    let (seq, hidden) = (16, 64);
    let mut b = GraphBuilder::new();
    let img = b.input("hidden_states", dtype, [1, seq, hidden]).unwrap();
    let t = b.input("temb", dtype, [1, hidden]).unwrap();
    let temb = linear(&mut b, NOT_SELECTED[0], t, hidden, true);
    let temb = b.silu(temb).unwrap();
    let m1 = linear(&mut b, NOT_SELECTED[1], temb, hidden, true);
    let m2 = linear(&mut b, NOT_SELECTED[2], temb, hidden, true);
    let m3 = linear(&mut b, NOT_SELECTED[3], temb, hidden, false);
    let m4 = linear(&mut b, NOT_SELECTED[4], temb, hidden, true);

    let q = linear(&mut b, SELECTED[0], img, hidden, true);
    let k = linear(&mut b, SELECTED[1], img, hidden, true);
    let v = linear(&mut b, SELECTED[2], img, hidden, false);
    // Residual connections, as in the real blocks, keep errors from
    // compounding through the chain of quantized linears.
    let qk = b.add(q, k).unwrap();
    let attn = b.add(qk, v).unwrap();
    let attn = b.mul(attn, m1).unwrap();
    let ff = linear(&mut b, SELECTED[3], attn, hidden, true);
    let ff = b.mul(ff, m2).unwrap();
    let h = b.add(img, ff).unwrap();
    let mlp = linear(&mut b, SELECTED[4], h, 2 * hidden, true);
    let mlp = b.gelu_tanh(mlp).unwrap();
    let single = linear(&mut b, SELECTED[5], mlp, hidden, true);
    let single = b.mul(single, m3).unwrap();
    let h = b.add(h, single).unwrap();
    let h = b.mul(h, m4).unwrap();
    let out = linear(&mut b, NOT_SELECTED[5], h, 16, true);
    b.output("sample", out).unwrap();
    b.finish().unwrap()
}

/// Nodes whose op satisfies `pred`.
fn nodes_where(graph: &Graph, pred: impl Fn(&Op) -> bool) -> Vec<NodeId> {
    graph
        .node_ids()
        .into_iter()
        .filter(|&id| pred(&graph.node(id).op))
        .collect()
}

/// Sorted scopes of the nodes whose op satisfies `pred`.
fn scopes_where(graph: &Graph, pred: impl Fn(&Op) -> bool) -> Vec<String> {
    let mut scopes: Vec<String> = nodes_where(graph, pred)
        .into_iter()
        .map(|id| graph.node(id).scope.clone())
        .collect();
    scopes.sort();
    scopes
}

fn sorted(scopes: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn is_linear(op: &Op) -> bool {
    *op == Op::Linear
}

fn is_scaled_linear(op: &Op) -> bool {
    matches!(op, Op::ScaledLinear { .. })
}

/// Runs the graph on `feeds`.
fn run(graph: &Graph, feeds: &HashMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    interp::run(graph, feeds).unwrap()
}

// ---------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------

#[test]
fn default_policy_quantizes_block_linears_but_not_modulation() {
    for mode in [Fp8Mode::DynamicTensor, Fp8Mode::DynamicRow] {
        let mut g = toy_flux(DType::BF16);
        let n = insert_fp8(&mut g, mode, &Fp8Policy::default()).unwrap();
        assert_eq!(n, SELECTED.len());
        verify(&g).unwrap();
        assert_eq!(scopes_where(&g, is_scaled_linear), sorted(&SELECTED));
        assert_eq!(scopes_where(&g, is_linear), sorted(&NOT_SELECTED));
    }
}

/// The one-row switch: a one-row linear with at least
/// `ONE_ROW_MIN_WEIGHTS` weights (FLUX's stacked modulation product, whose
/// scope no glob names) is quantized when `one_row` is on, whatever the
/// globs say, and left alone when it is off; a smaller one-row linear (the
/// time embedder's) never is. (Graphs are only built here, not run: the
/// large weight has 2²⁴ elements.)
#[test]
fn large_one_row_linears_follow_the_one_row_switch() {
    let build = || {
        let mut b = GraphBuilder::new();
        let t = b.input("temb", DType::BF16, [1, 4096]).unwrap();
        let small = linear(&mut b, NOT_SELECTED[0], t, 64, true);
        let stacked = linear(&mut b, "", t, ONE_ROW_MIN_WEIGHTS / 4096, true);
        b.output("small", small).unwrap();
        b.output("stacked", stacked).unwrap();
        b.finish().unwrap()
    };
    for mode in [Fp8Mode::DynamicTensor, Fp8Mode::DynamicRow] {
        for one_row in [true, false] {
            let mut g = build();
            let policy = Fp8Policy {
                one_row,
                ..Fp8Policy::default()
            };
            let n = insert_fp8(&mut g, mode, &policy).unwrap();
            verify(&g).unwrap();
            assert_eq!(n, usize::from(one_row), "{mode:?} one_row {one_row}");
            let left: &[&str] = if one_row {
                &[NOT_SELECTED[0]]
            } else {
                &[NOT_SELECTED[0], ""]
            };
            assert_eq!(scopes_where(&g, is_linear), sorted(left));
            let scaled = nodes_where(&g, is_scaled_linear);
            assert_eq!(scaled.len(), usize::from(one_row));
            for s in scaled {
                // Weight [N, 4096] in e4m3, per channel in row mode.
                let ws = g.operands(s)[3];
                let expected = if mode == Fp8Mode::DynamicRow {
                    ONE_ROW_MIN_WEIGHTS / 4096
                } else {
                    1
                };
                assert_eq!(g.ty(ws).shape.numel(), expected);
            }
        }
    }
    // Just below the threshold it stays bf16 even with the switch on.
    let mut b = GraphBuilder::new();
    let t = b.input("temb", DType::BF16, [1, 4096]).unwrap();
    let y = linear(&mut b, "", t, ONE_ROW_MIN_WEIGHTS / 4096 - 1, true);
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    assert_eq!(
        insert_fp8(&mut g, Fp8Mode::DynamicRow, &Fp8Policy::default()).unwrap(),
        0
    );
}

#[test]
fn policy_globs_match_across_dots() {
    let selector = ScopeSelector::new(&Fp8Policy::default()).unwrap();
    for scope in SELECTED {
        assert!(selector.selects(scope), "{scope}");
    }
    for scope in NOT_SELECTED {
        assert!(!selector.selects(scope), "{scope}");
    }
    // `transformer_blocks.*` must not catch `single_transformer_blocks.*`
    // by substring: globs match the whole scope.
    let only_double = Fp8Policy {
        include: vec!["transformer_blocks.*".into()],
        exclude: vec![],
        min_rows: 0,
        bf16_shapes: vec![],
        attention: false,
        one_row: false,
    };
    let selector = ScopeSelector::new(&only_double).unwrap();
    assert!(selector.selects("transformer_blocks.12.ff.net.0.proj"));
    assert!(!selector.selects("single_transformer_blocks.0.proj_mlp"));
}

#[test]
fn custom_policy_include_and_exclude() {
    let policy = Fp8Policy {
        include: vec!["*.attn.*".into(), "proj_out".into()],
        exclude: vec!["*.to_k".into()],
        min_rows: 0,
        bf16_shapes: vec![],
        attention: false,
        one_row: false,
    };
    let mut g = toy_flux(DType::F32);
    let n = insert_fp8(&mut g, Fp8Mode::DynamicRow, &policy).unwrap();
    assert_eq!(n, 3);
    verify(&g).unwrap();
    let expected = [
        "proj_out",
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",
    ];
    assert_eq!(scopes_where(&g, is_scaled_linear), sorted(&expected));
}

#[test]
fn empty_include_selects_nothing_and_changes_nothing() {
    let policy = Fp8Policy {
        include: vec![],
        exclude: vec![],
        min_rows: 0,
        bf16_shapes: vec![],
        attention: false,
        one_row: false,
    };
    let mut g = toy_flux(DType::BF16);
    let before = print_graph(&g).unwrap();
    assert_eq!(
        insert_fp8(&mut g, Fp8Mode::DynamicTensor, &policy).unwrap(),
        0
    );
    assert_eq!(print_graph(&g).unwrap(), before);
}

#[test]
fn off_changes_nothing() {
    let mut g = toy_flux(DType::BF16);
    let before = print_graph(&g).unwrap();
    let nodes = g.len();
    assert_eq!(
        insert_fp8(&mut g, Fp8Mode::Off, &Fp8Policy::default()).unwrap(),
        0
    );
    assert_eq!(g.len(), nodes);
    assert_eq!(print_graph(&g).unwrap(), before);
}

#[test]
fn bad_glob_is_an_error_and_leaves_the_graph_alone() {
    let mut g = toy_flux(DType::BF16);
    let before = print_graph(&g).unwrap();
    for policy in [
        Fp8Policy {
            include: vec!["transformer_blocks.[0".into()],
            exclude: vec![],
            min_rows: 0,
            bf16_shapes: vec![],
            attention: false,
            one_row: false,
        },
        Fp8Policy {
            include: vec!["*".into()],
            exclude: vec!["*.{norm1".into()],
            min_rows: 0,
            bf16_shapes: vec![],
            attention: false,
            one_row: false,
        },
    ] {
        let err = insert_fp8(&mut g, Fp8Mode::DynamicRow, &policy).unwrap_err();
        let IrError::Invalid(msg) = &err else {
            panic!("expected IrError::Invalid, got {err:?}");
        };
        let bad = policy.include.iter().chain(&policy.exclude).last().unwrap();
        assert!(msg.contains(&format!("`{bad}`")), "{msg}");
        assert!(msg.contains("fp8 policy"), "{msg}");
        assert!(ScopeSelector::new(&policy).is_err());
    }
    assert_eq!(print_graph(&g).unwrap(), before);
}

#[test]
fn linears_already_in_fp8_are_skipped() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F8E4M3, [4, 8]).unwrap();
    let y = linear(&mut b, "transformer_blocks.0.attn.to_q", x, 8, false);
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let before = print_graph(&g).unwrap();
    assert_eq!(
        insert_fp8(&mut g, Fp8Mode::DynamicRow, &Fp8Policy::default()).unwrap(),
        0
    );
    assert_eq!(print_graph(&g).unwrap(), before);
}

// ---------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------

/// One linear `[2, 8, 32] · [24, 32]ᵀ (+ b)` in `dtype`, rewritten in `mode`.
fn single_linear(dtype: DType, mode: Fp8Mode, bias: bool) -> (Graph, usize) {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, [2, 8, 32]).unwrap();
    let y = linear(&mut b, "transformer_blocks.0.attn.to_q", x, 24, bias);
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let n = insert_fp8(&mut g, mode, &Fp8Policy::default()).unwrap();
    (g, n)
}

/// Checks the rewritten single linear: operand order, attributes, shapes,
/// dtypes and scopes of the five new nodes, and that nothing else remains.
fn check_structure(dtype: DType, mode: Fp8Mode, bias: bool) {
    let per_row = mode == Fp8Mode::DynamicRow;
    let (g, n) = single_linear(dtype, mode, bias);
    assert_eq!(n, 1);
    verify(&g).unwrap();
    assert!(nodes_where(&g, is_linear).is_empty());
    // x, w, (b), 2 scales, 2 quantizes, the scaled linear.
    assert_eq!(g.len(), 7 + bias as usize);

    let [y] = nodes_where(&g, is_scaled_linear)[..] else {
        panic!("expected one scaled_linear");
    };
    assert_eq!(g.outputs()[0].1, y);
    assert_eq!(g.node(y).op, Op::ScaledLinear { out: dtype });
    assert_eq!(g.ty(y).dtype, dtype);
    assert_eq!(g.ty(y).shape.dims(), &[2, 8, 24]);
    let ops = g.operands(y);
    assert_eq!(ops.len(), 4 + bias as usize);
    let (xq, xs, wq, ws) = (ops[0], ops[1], ops[2], ops[3]);
    let x = g.find_input("x").unwrap();
    let w = g
        .find_input("transformer_blocks.0.attn.to_q.weight")
        .unwrap();
    if bias {
        let b = g.find_input("transformer_blocks.0.attn.to_q.bias").unwrap();
        assert_eq!(ops[4], b);
    }

    let scale_op = Op::DynamicScale {
        dtype: FP8_DTYPE,
        per_row,
    };
    for (scale, quantized, source, scale_dims, dims) in [
        (
            xs,
            xq,
            x,
            if per_row { vec![2, 8, 1] } else { vec![1] },
            vec![2, 8, 32],
        ),
        (
            ws,
            wq,
            w,
            if per_row { vec![24, 1] } else { vec![1] },
            vec![24, 32],
        ),
    ] {
        assert_eq!(g.node(scale).op, scale_op);
        assert_eq!(g.operands(scale), [source]);
        assert_eq!(g.ty(scale).dtype, DType::F32);
        assert_eq!(g.ty(scale).shape.dims(), scale_dims.as_slice());
        assert_eq!(g.node(quantized).op, Op::Quantize(DType::F8E4M3));
        assert_eq!(g.operands(quantized), [source, scale]);
        assert_eq!(g.ty(quantized).dtype, DType::F8E4M3);
        assert_eq!(g.ty(quantized).shape.dims(), dims.as_slice());
    }
    for id in [xs, xq, ws, wq, y] {
        assert_eq!(g.node(id).scope, "transformer_blocks.0.attn.to_q");
    }
}

#[test]
fn dynamic_tensor_structure() {
    check_structure(DType::BF16, Fp8Mode::DynamicTensor, true);
    check_structure(DType::F32, Fp8Mode::DynamicTensor, false);
}

#[test]
fn dynamic_row_structure() {
    check_structure(DType::BF16, Fp8Mode::DynamicRow, true);
    check_structure(DType::F16, Fp8Mode::DynamicRow, false);
}

#[test]
fn shared_input_is_quantized_once_and_weight_side_reads_weights() {
    let mut g = toy_flux(DType::BF16);
    insert_fp8(&mut g, Fp8Mode::DynamicRow, &Fp8Policy::default()).unwrap();
    let img = g.find_input("hidden_states").unwrap();
    // q, k and v read one quantization of their shared input.
    let img_scales: Vec<NodeId> = g
        .users(img)
        .into_iter()
        .map(|(user, _)| user)
        .filter(|&u| matches!(g.node(u).op, Op::DynamicScale { .. }))
        .collect();
    assert_eq!(img_scales.len(), 1);
    // One scale per quantized tensor: 4 activations (img, attn, h, mlp) and
    // 6 weights.
    let scales = nodes_where(&g, |op| matches!(op, Op::DynamicScale { .. }));
    assert_eq!(scales.len(), 10);
    // The weight operand of every scaled linear is quantized from a weight
    // input alone.
    for y in nodes_where(&g, is_scaled_linear) {
        let ops = g.operands(y);
        let (wq, ws) = (ops[2], ops[3]);
        for id in [wq, ws] {
            let source = g.operands(id)[0];
            assert!(g.node(source).op.is_weight(), "{}", g.node(source).op);
        }
        assert_eq!(g.operands(wq)[1], ws);
    }
}

#[test]
fn chained_linears_are_all_rewritten() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3, 16]).unwrap();
    let mut h = x;
    for i in 0..3 {
        h = linear(
            &mut b,
            &format!("transformer_blocks.{i}.ff.net.2"),
            h,
            16,
            i != 1,
        );
    }
    b.output("y", h).unwrap();
    // Also an output that is an intermediate linear.
    let mid = b.graph().operands(h)[0];
    b.output("mid", mid).unwrap();
    let mut g = b.finish().unwrap();
    let feeds = random_feeds(&g, 11);
    let before = run(&g, &feeds);
    assert_eq!(
        insert_fp8(&mut g, Fp8Mode::DynamicTensor, &Fp8Policy::default()).unwrap(),
        3
    );
    verify(&g).unwrap();
    assert!(nodes_where(&g, is_linear).is_empty());
    let after = run(&g, &feeds);
    for name in ["y", "mid"] {
        let err = after[name].rel_l2(&before[name]);
        // Three quantized GEMMs in a row: see WHOLE_GRAPH_TOL.
        assert!(err < WHOLE_GRAPH_TOL, "{name}: {err}");
    }
}

// ---------------------------------------------------------------------------
// Numerics
// ---------------------------------------------------------------------------

/// The whole-graph bound: each quantized linear alone moves the toy
/// graph's output by 2–5% relative L2 (e4m3 rounds both GEMM operands with
/// ~2.5% RMS relative error each); the toy graph chains four of them, and
/// independent errors add up in quadrature to ~7% (measured 5.5–8.5%).
const WHOLE_GRAPH_TOL: f64 = 0.12;

#[test]
fn quantized_graph_approximates_the_original() {
    for mode in [Fp8Mode::DynamicTensor, Fp8Mode::DynamicRow] {
        for seed in [1, 100] {
            let original = toy_flux(DType::F32);
            let mut g = original.clone();
            insert_fp8(&mut g, mode, &Fp8Policy::default()).unwrap();
            verify(&g).unwrap();
            let feeds = random_feeds(&original, seed);
            let before = run(&original, &feeds);
            let after = run(&g, &feeds);
            let err = after["sample"].rel_l2(&before["sample"]);
            assert!(err < WHOLE_GRAPH_TOL, "{mode:?} seed {seed}: {err}");
            assert!(err > 1e-3, "{mode:?} seed {seed}: nothing was quantized");
        }
    }
}

#[test]
fn one_quantized_linear_stays_within_five_percent() {
    for mode in [Fp8Mode::DynamicTensor, Fp8Mode::DynamicRow] {
        for seed in [5, 6, 7] {
            let mut b = GraphBuilder::new();
            let x = b.input("x", DType::F32, [2, 8, 64]).unwrap();
            let y = linear(&mut b, "single_transformer_blocks.3.proj_mlp", x, 48, true);
            b.output("y", y).unwrap();
            let original = b.finish().unwrap();
            let mut g = original.clone();
            assert_eq!(insert_fp8(&mut g, mode, &Fp8Policy::default()).unwrap(), 1);
            verify(&g).unwrap();
            let feeds = random_feeds(&original, seed);
            let err = run(&g, &feeds)["y"].rel_l2(&run(&original, &feeds)["y"]);
            assert!(err < 5e-2 && err > 1e-3, "{mode:?} seed {seed}: {err}");
        }
    }
}

#[test]
fn bf16_shapes_keep_those_linears_unquantized() {
    // The tuner's measured choice: every linear of one shape stays bf16,
    // the others are quantized as before.
    let all = Fp8Policy {
        include: vec!["*".into()],
        exclude: vec![],
        min_rows: 0,
        bf16_shapes: vec![],
        attention: false,
        one_row: false,
    };
    let mut g = toy_flux(DType::BF16);
    let shapes: Vec<[usize; 3]> = g
        .node_ids()
        .into_iter()
        .filter(|&id| g.node(id).op == fluxc_ir::Op::Linear)
        .map(|id| fluxc_passes::fp8::linear_shape(&g, id))
        .collect();
    let every = insert_fp8(&mut g, Fp8Mode::DynamicRow, &all).unwrap();
    let kept = shapes[0];
    let same = shapes.iter().filter(|s| **s == kept).count();
    let policy = Fp8Policy {
        bf16_shapes: vec![kept],
        ..all
    };
    let mut g = toy_flux(DType::BF16);
    let some = insert_fp8(&mut g, Fp8Mode::DynamicRow, &policy).unwrap();
    assert_eq!(some, every - same);
    for id in g.node_ids() {
        if g.node(id).op == fluxc_ir::Op::Linear {
            assert_eq!(fluxc_passes::fp8::linear_shape(&g, id), kept);
        }
    }
    verify(&g).unwrap();
}

#[test]
fn min_rows_keeps_short_inputs_unquantized() {
    // toy_flux's linears read either the 16 image rows or the one-row
    // timestep embedding: a limit of 16 rows keeps the one-row GEMVs as
    // they are (FLUX's 512-row text stream is kept out the same way).
    let all = Fp8Policy {
        include: vec!["*".into()],
        exclude: vec![],
        min_rows: 0,
        bf16_shapes: vec![],
        attention: false,
        one_row: false,
    };
    let mut g = toy_flux(DType::BF16);
    let every = insert_fp8(&mut g, Fp8Mode::DynamicRow, &all).unwrap();
    let mut g = toy_flux(DType::BF16);
    let rows = |g: &fluxc_ir::Graph, id: fluxc_ir::NodeId| {
        let x = g.ty(g.operands(id)[0]);
        x.shape.numel() / x.shape.dims().last().unwrap()
    };
    let image_rows = g
        .node_ids()
        .into_iter()
        .filter(|&id| g.node(id).op == fluxc_ir::Op::Linear)
        .map(|id| rows(&g, id))
        .max()
        .unwrap();
    let limited = Fp8Policy {
        min_rows: image_rows,
        ..all
    };
    let some = insert_fp8(&mut g, Fp8Mode::DynamicRow, &limited).unwrap();
    assert!(0 < some && some < every, "{some} of {every}");
    for id in g.node_ids() {
        match g.node(id).op {
            fluxc_ir::Op::Linear => assert!(rows(&g, id) < image_rows),
            fluxc_ir::Op::ScaledLinear { .. } => assert!(rows(&g, id) >= image_rows),
            _ => {}
        }
    }
    verify(&g).unwrap();
}
