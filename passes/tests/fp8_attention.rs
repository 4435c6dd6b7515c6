//! Tests of the fp8 attention pass
//! (`fluxc_passes::fp8_attention::insert_fp8_attention`) on small graphs.
//!
//! Checked: the rewrite's structure (per-tensor scales and e4m3 quantizes of
//! q, k and v in the attention's scope, operand order, the score scale kept,
//! bf16 output, the old attention gone); nothing changes with fp8 off or
//! the policy's `attention` off; attentions the fp8 kernel cannot run are
//! left alone (64-wide heads, a v of another width, f32); a tensor read
//! twice is quantized once; interpreting before and after agrees within
//! the attention-only bound; the pipeline's `fp8` step runs it and says so.
//! The tiny FLUX models with 128-wide heads are tested in
//! `models/tests/fp8_attention.rs`.

mod common;

use fluxc_ir::{print_graph, verify, BinaryOp, DType, Graph, GraphBuilder, NodeId, Op, Scalar};
use fluxc_passes::fp8_attention::{
    insert_fp8_attention, FP8_ATTENTION_DTYPE, FP8_ATTENTION_QK_RANGE,
};
use fluxc_passes::pipeline::optimize;
use fluxc_passes::{Fp8Mode, Fp8Policy, PassOptions};

use common::{count, random_inputs, run};

/// The policy with attention on.
fn with_attention() -> Fp8Policy {
    Fp8Policy {
        attention: true,
        ..Fp8Policy::default()
    }
}

/// `x + attention(q, k, v)` with `heads × d` q/k and `heads × dv` v, each
/// read from its own `[1, s, heads, ·]` input, in `dtype`, in scope
/// `blocks.0.attn`.
fn attention_graph(dtype: DType, heads: usize, d: usize, dv: usize, s: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let q = b.input("q", dtype, [1, s, heads, d]).unwrap();
    let k = b.input("k", dtype, [1, s + 3, heads, d]).unwrap();
    let v = b.input("v", dtype, [1, s + 3, heads, dv]).unwrap();
    let x = b.input("x", dtype, [1, s, heads, dv]).unwrap();
    b.push_scope("blocks.0.attn");
    let o = b.attention(q, k, v).unwrap();
    b.pop_scope();
    let y = b.add(x, o).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

fn nodes_where(graph: &Graph, pred: impl Fn(&Op) -> bool) -> Vec<NodeId> {
    graph
        .node_ids()
        .into_iter()
        .filter(|&id| pred(&graph.node(id).op))
        .collect()
}

/// The graph's one `scaled_attention` (the test fails if it has another
/// number of them).
fn the_scaled_attention(graph: &Graph) -> NodeId {
    let [a] = nodes_where(graph, |op| matches!(op, Op::ScaledAttention { .. }))[..] else {
        panic!("expected one scaled_attention")
    };
    a
}

#[test]
fn a_128_wide_bf16_attention_becomes_scaled_attention() {
    for mode in [Fp8Mode::DynamicTensor, Fp8Mode::DynamicRow] {
        let mut g = attention_graph(DType::BF16, 2, 128, 128, 5);
        assert_eq!(
            insert_fp8_attention(&mut g, mode, &with_attention()).unwrap(),
            1
        );
        verify(&g).unwrap();
        assert_eq!(count(&g, "attention"), 0);
        let o = the_scaled_attention(&g);
        // The builder's 1/√128, times 28 for each of q and k (quantized
        // into ±16, with the 28 moved onto the values).
        let shrink = 448.0 / FP8_ATTENTION_QK_RANGE;
        assert_eq!(
            g.node(o).op,
            Op::ScaledAttention {
                scale: Scalar(1.0 / (128f32).sqrt() * shrink * shrink)
            }
        );
        assert_eq!(g.node(o).scope, "blocks.0.attn");
        assert_eq!(g.ty(o).dtype, DType::BF16);
        assert_eq!(g.ty(o).shape.dims(), &[1, 5, 2, 128]);
        let ops = g.operands(o);
        assert_eq!(ops.len(), 6);
        for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
            let (x8, xs) = (ops[2 * i], ops[2 * i + 1]);
            let x = g.find_input(name).unwrap();
            // Per tensor in both modes: the kernel takes one scale each.
            assert_eq!(
                g.node(xs).op,
                Op::DynamicScale {
                    dtype: FP8_ATTENTION_DTYPE,
                    per_row: false
                }
            );
            assert_eq!(g.operands(xs), [x]);
            assert_eq!(g.ty(xs).shape.dims(), &[1]);
            assert_eq!(g.node(xs).scope, "blocks.0.attn", "{name}");
            if name == "v" {
                // v goes in as it is: the op quantizes it.
                assert_eq!(x8, x);
                continue;
            }
            assert_eq!(g.node(x8).op, Op::Quantize(DType::F8E4M3));
            let [shrunk, scale] = g.operands(x8)[..] else {
                panic!("quantize takes two operands")
            };
            assert_eq!(scale, xs);
            assert_eq!(
                g.node(shrunk).op,
                Op::BinaryScalar {
                    op: BinaryOp::Mul,
                    scalar: Scalar(1.0 / shrink)
                }
            );
            assert_eq!(g.operands(shrunk), [x]);
            assert_eq!(g.ty(x8).shape, g.ty(x).shape);
            assert_eq!(g.node(x8).scope, "blocks.0.attn", "{name}");
        }
        // inputs q, k, v, x; 3 scales, 2 shrinks, 2 quantizes; the
        // attention; the add.
        assert_eq!(g.len(), 4 + 7 + 1 + 1);
    }
}

#[test]
fn off_mode_or_policy_changes_nothing() {
    let without_attention = Fp8Policy {
        attention: false,
        ..Fp8Policy::default()
    };
    for (mode, policy) in [
        (Fp8Mode::Off, with_attention()),
        (Fp8Mode::Off, Fp8Policy::default()),
        (Fp8Mode::DynamicRow, without_attention.clone()),
        (Fp8Mode::DynamicTensor, without_attention.clone()),
    ] {
        let mut g = attention_graph(DType::BF16, 2, 128, 128, 5);
        let before = print_graph(&g).unwrap();
        assert_eq!(insert_fp8_attention(&mut g, mode, &policy).unwrap(), 0);
        assert_eq!(print_graph(&g).unwrap(), before, "{mode:?}");
    }
}

#[test]
fn attentions_the_kernel_cannot_run_are_left_alone() {
    for (what, g) in [
        ("64-wide heads", attention_graph(DType::BF16, 2, 64, 64, 5)),
        (
            "v wider than q",
            attention_graph(DType::BF16, 2, 128, 256, 5),
        ),
        (
            "v narrower than q",
            attention_graph(DType::BF16, 2, 128, 64, 5),
        ),
        ("f32", attention_graph(DType::F32, 2, 128, 128, 5)),
        ("f16", attention_graph(DType::F16, 2, 128, 128, 5)),
    ] {
        let mut g = g;
        let before = print_graph(&g).unwrap();
        let n = insert_fp8_attention(&mut g, Fp8Mode::DynamicRow, &with_attention()).unwrap();
        assert_eq!(n, 0, "{what}");
        assert_eq!(print_graph(&g).unwrap(), before, "{what}");
    }
}

#[test]
fn only_the_128_wide_attention_of_two_is_rewritten() {
    // Two attentions side by side: 128-wide heads and 64-wide heads.
    let mut b = GraphBuilder::new();
    let wide = b.input("wide", DType::BF16, [1, 7, 2, 128]).unwrap();
    let narrow = b.input("narrow", DType::BF16, [1, 7, 4, 64]).unwrap();
    let a = b.attention(wide, wide, wide).unwrap();
    let c = b.attention(narrow, narrow, narrow).unwrap();
    let a = b.reshape(a, [1, 7, 256]).unwrap();
    let c = b.reshape(c, [1, 7, 256]).unwrap();
    let y = b.add(a, c).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let inputs = random_inputs(&g, 3);
    let before = run(&g, &inputs, "y");
    assert_eq!(
        insert_fp8_attention(&mut g, Fp8Mode::DynamicTensor, &with_attention()).unwrap(),
        1
    );
    verify(&g).unwrap();
    assert_eq!(count(&g, "scaled_attention"), 1);
    let [left] = nodes_where(&g, |op| matches!(op, Op::Attention { .. }))[..] else {
        panic!("expected the 64-wide attention to stay")
    };
    assert_eq!(g.ty(left).shape.dims(), &[1, 7, 4, 64]);
    // q, k and v are one tensor here: quantized once, read three times.
    assert_eq!(count(&g, "dynamic_scale"), 1);
    assert_eq!(count(&g, "quantize"), 1);
    let after = run(&g, &inputs, "y");
    let error = after.rel_l2(&before);
    // Half of y is the fp8 attention: see ATTENTION_TOL.
    assert!(error < ATTENTION_TOL && error > 1e-4, "{error:e}");
}

/// Relative L2 allowed between one fp8 attention and the bf16 one on random
/// inputs in [-1, 1). Three error sources: e4m3 rounding of q, k and v
/// (3 mantissa bits: ~2.5% RMS relative each; through the softmax, q's and
/// k's errors move the scores by ~1/√D of that per score, so v's rounding
/// dominates), and the e4m3 probabilities (~2.5% RMS, averaging over keys
/// like the output itself, see `ir/tests/interp_scaled_attention.rs`).
/// Independent, they add in quadrature to ~4%; measured 3.2e-2 to 3.6e-2
/// on the cases here.
const ATTENTION_TOL: f64 = 6e-2;

#[test]
fn interpretation_stays_close_to_the_bf16_attention() {
    for (s, seed) in [(5, 1), (37, 2), (130, 3)] {
        let original = attention_graph(DType::BF16, 2, 128, 128, s);
        let mut g = original.clone();
        insert_fp8_attention(&mut g, Fp8Mode::DynamicRow, &with_attention()).unwrap();
        // Compare the attention alone: y − x, i.e. set x to zero.
        let mut inputs = random_inputs(&original, seed);
        let x = inputs.get_mut("x").unwrap();
        x.data.iter_mut().for_each(|v| *v = 0.0);
        let before = run(&original, &inputs, "y");
        let after = run(&g, &inputs, "y");
        let error = after.rel_l2(&before);
        println!("seq {s}: fp8 attention vs bf16 attention, relative L2 {error:.3e}");
        assert!(error < ATTENTION_TOL, "seq {s}: {error:e}");
        assert!(error > 1e-3, "seq {s}: nothing was quantized? {error:e}");
    }
}

#[test]
fn the_pipeline_runs_it_in_the_fp8_step() {
    for (attention, rewritten, log) in [
        (
            true,
            1,
            "fp8: quantized 0 linears (DynamicRow), 1 attentions (per tensor)",
        ),
        (
            false,
            0,
            "fp8: quantized 0 linears (DynamicRow), attention off",
        ),
    ] {
        let options = PassOptions {
            fp8: Fp8Mode::DynamicRow,
            fp8_policy: Fp8Policy {
                attention,
                ..Fp8Policy::default()
            },
            ..PassOptions::default()
        };
        let o = optimize(attention_graph(DType::BF16, 2, 128, 128, 9), &options).unwrap();
        assert_eq!(count(&o.graph, "scaled_attention"), rewritten);
        assert_eq!(count(&o.graph, "attention"), 1 - rewritten);
        assert!(o.log.iter().any(|l| l == log), "{:?}", o.log);
        // The attention group is anchored at the scaled attention.
        if attention {
            let anchored = o
                .fusion
                .groups
                .iter()
                .filter(|g| matches!(o.graph.node(g.anchor).op, Op::ScaledAttention { .. }))
                .count();
            assert_eq!(anchored, 1);
        }
    }
}

/// One RMS-normalized, rotated tensor read as q, k and v: q and k take the
/// norm bound (and give the score scale their 28·√D), v its own absmax, so
/// the result still matches bf16 attention. (Sharing q's quantization with
/// v would scale the output by √D.)
#[test]
fn a_rotated_tensor_read_as_v_too_is_quantized_by_its_absmax_there() {
    let (s, heads, d) = (24, 2, 128);
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [1, s, heads, d]).unwrap();
    let ids = b.input("ids", DType::F32, [s, 3]).unwrap();
    let w = b.weight("norm.weight", DType::BF16, [d]).unwrap();
    b.push_scope("blocks.0.attn");
    let table = b.rope_table(ids, &[16, 56, 56], 10000.0).unwrap();
    let normed = b.rms_norm(x, Some(w), 1e-6).unwrap();
    let rotated = b.apply_rope(normed, table).unwrap();
    let o = b.attention(rotated, rotated, rotated).unwrap();
    b.pop_scope();
    b.output("y", o).unwrap();
    let original = b.finish().unwrap();

    let mut g = original.clone();
    insert_fp8_attention(&mut g, Fp8Mode::DynamicTensor, &with_attention()).unwrap();
    verify(&g).unwrap();
    let a = the_scaled_attention(&g);
    let ops = g.operands(a);
    // q and k share one quantization; v has its own, by its absmax.
    assert_eq!((ops[0], ops[1]), (ops[2], ops[3]));
    assert_ne!(ops[4], ops[0]);
    assert_eq!(g.operands(ops[5]), [rotated]);
    // 1/√D, times 28·√D for q and for k.
    let Op::ScaledAttention { scale } = g.node(a).op else {
        unreachable!()
    };
    let shrink = 448.0 / FP8_ATTENTION_QK_RANGE;
    let expected = shrink * shrink * (d as f32).sqrt();
    assert!((scale.get() / expected - 1.0).abs() < 1e-6, "{scale}");
    let inputs = random_inputs(&original, 7);
    let error = run(&g, &inputs, "y").rel_l2(&run(&original, &inputs, "y"));
    println!("q = k = v rotated: fp8 vs bf16 attention, relative L2 {error:.3e}");
    assert!(error < ATTENTION_TOL, "{error:e}");
}

/// The double blocks' q: RMS-normalized text and image rows, concatenated
/// along the sequence, then rotated. It is quantized part by part —
/// `concat(quantize(apply_rope(partᵢ, table rows of partᵢ) / (28·√D)))` —
/// which is, value for value, the whole's quantization by the same scale
/// (rotation and quantization act on each position alone): checked against
/// `quantize(apply_rope(concat) / (28·√D))` built in the same graph.
#[test]
fn concatenated_rotated_parts_quantize_part_by_part_exactly() {
    let (text, image, heads, d) = (5, 19, 2, 128);
    let mut b = GraphBuilder::new();
    let t = b.input("t", DType::BF16, [1, text, heads, d]).unwrap();
    let i = b.input("i", DType::BF16, [1, image, heads, d]).unwrap();
    let v = b
        .input("v", DType::BF16, [1, text + image, heads, d])
        .unwrap();
    let ids = b.input("ids", DType::F32, [text + image, 3]).unwrap();
    let wt = b.weight("norm_t.weight", DType::BF16, [d]).unwrap();
    let wi = b.weight("norm_i.weight", DType::BF16, [d]).unwrap();
    b.push_scope("transformer_blocks.0.attn");
    let table = b.rope_table(ids, &[16, 56, 56], 10000.0).unwrap();
    let nt = b.rms_norm(t, Some(wt), 1e-6).unwrap();
    let ni = b.rms_norm(i, Some(wi), 1e-6).unwrap();
    let joined = b.concat(&[nt, ni], 1).unwrap();
    let rotated = b.apply_rope(joined, table).unwrap();
    let o = b.attention(rotated, rotated, v).unwrap();
    // The whole tensor's quantization, for comparison.
    let both = b.concat(&[wt, wi], 0).unwrap();
    let scale = b.dynamic_scale(both, FP8_ATTENTION_DTYPE, false).unwrap();
    let shrink = 448.0 / FP8_ATTENTION_QK_RANGE * (d as f32).sqrt();
    let shrunk = b.mul_scalar(rotated, 1.0 / shrink).unwrap();
    let whole = b.quantize(shrunk, scale, FP8_ATTENTION_DTYPE).unwrap();
    b.pop_scope();
    b.output("y", o).unwrap();
    b.output("whole", whole).unwrap();
    let original = b.finish().unwrap();

    let mut g = original.clone();
    insert_fp8_attention(&mut g, Fp8Mode::DynamicRow, &with_attention()).unwrap();
    verify(&g).unwrap();
    let a = the_scaled_attention(&g);
    let q8 = g.operands(a)[0];
    assert_eq!(g.node(q8).op, Op::Concat { axis: 1 });
    let parts = g.operands(q8);
    assert_eq!(parts.len(), 2);
    for (&part, (norm, rows)) in parts.iter().zip([(nt, 0..text), (ni, text..text + image)]) {
        assert_eq!(g.node(part).op, Op::Quantize(FP8_ATTENTION_DTYPE));
        let shrunk = g.operands(part)[0];
        let rope = g.operands(shrunk)[0];
        assert_eq!(g.node(rope).op, Op::ApplyRope);
        let [x, rows_table] = g.operands(rope)[..] else {
            unreachable!()
        };
        assert_eq!(x, norm);
        assert_eq!(
            g.node(rows_table).op,
            Op::Slice {
                axis: 0,
                start: rows.start,
                end: rows.end
            }
        );
        assert_eq!(g.operands(rows_table), [table]);
    }
    let whole = g
        .outputs()
        .iter()
        .find(|(name, _)| name == "whole")
        .map(|&(_, id)| id)
        .unwrap();
    let inputs = random_inputs(&original, 11);
    let values = fluxc_ir::interp::run_keeping(&g, &inputs, &[q8, whole]).unwrap();
    let whole = &values[&whole];
    assert_eq!(values[&q8].data, whole.data);
    assert!(whole.data.iter().any(|&x| x != 0.0));
}
