//! Integration tests of the interpreter's `ScaledAttention` (fp8 e4m3
//! attention with per-tensor scales and e4m3 probabilities).
//!
//! - A hand-checked case: two query rows over two keys, every rounding
//!   worked out in the comments.
//! - Random cases (several batch/head counts, key lengths 1, 37 and 130 —
//!   multiples of nothing the kernel tiles by —, flat and peaked scores):
//!   against plain `Attention` over the *dequantized* q, k, v, every
//!   element lies within the bound derived in [`derived_bound`], and the
//!   relative L2 distance stays under [`REL_L2_BOUND`].
//! - The scores are the e4m3 dot products rounded to f16, as the kernel
//!   accumulates them (a hand-checked case where that rounding shows), and
//!   a dot product past f16's range rounds to ∞.
//! - The output is bf16 (declared and rounded); the op prints with its
//!   score scale and verifies, and a graph whose stored type disagrees
//!   with it does not.
//!
//! The empty key sequence (zeros, as `Attention` gives) cannot be built as
//! a graph (type inference rejects empty tensors); the interpreter's unit
//! test `interp::kernels::tests::no_keys_give_zeros` covers it.

mod common;

use common::{pseudo_random, Harness};

use fluxc_ir::{print_graph, verify, DType, GraphBuilder, NodeId, Op, Scalar, UnaryOp};

const E4M3: DType = DType::F8E4M3;

/// Relative L2 distance allowed between `ScaledAttention` and `Attention`
/// over the same dequantized operands. What differs is the e4m3 rounding of
/// `256·P` (relative error at most 2⁻⁴ per probability, RMS about 2.5% for
/// values spread over a binade) and the bf16 output (2⁻⁹). The errors of
/// the probabilities are independent, so they average like the output's
/// own sum over keys: the relative error of the output is about the RMS
/// relative error of one probability. Measured on the cases below:
/// 1.2e-2 to 2.5e-2 (a single key is exact but for bf16: `P = 1`).
const REL_L2_BOUND: f64 = 4e-2;

/// Builds `x` as a bf16 input fed with `data`, quantized to e4m3 with a
/// per-tensor dynamic scale into `±range` (448 for v; 16 for q and k, whose
/// products the op accumulates in f16); returns `(x, x8, scale)`.
fn quantized_input(
    h: &mut Harness,
    name: &str,
    dims: &[usize],
    data: Vec<f32>,
    range: f32,
) -> (NodeId, NodeId, NodeId) {
    let x = h.input_typed(name, DType::BF16, dims, data);
    let s = h.b.dynamic_scale(x, E4M3, false).unwrap();
    let s = h.b.mul_scalar(s, 448.0 / range).unwrap();
    let x8 = h.b.quantize(x, s, E4M3).unwrap();
    (x, x8, s)
}

/// `x8 · scale` in f32: the dequantized operand, built from graph ops.
fn dequantized(h: &mut Harness, x8: NodeId, scale: NodeId) -> NodeId {
    let x = h.b.cast(x8, DType::F32).unwrap();
    h.b.mul(x, scale).unwrap()
}

/// The bound on `|scaled − reference|` for one output element, derived from
/// where the two differ. With `P_j = exp(S_j − m)`, `l = Σ P_j ≥ 1` (the
/// max key contributes `P = 1`), `p̂_j = e4m3(256·P_j)/256`, `δ_j = p̂_j −
/// P_j` and `r` the reference `Σ P_j v_j / l`:
///
/// `Σ p̂_j v_j / Σ p̂_j − r = Σ δ_j (v_j − r) / Σ p̂_j`.
///
/// e4m3 rounds a normal value (≥ 2⁻⁶) to within half a step, at most 2⁻⁴
/// of the value; below 2⁻⁶ (subnormals) the step is 2⁻⁹, so the error is
/// at most 2⁻¹⁰ absolute, i.e. 2⁻¹⁸ after dividing by 256. So
/// `|δ_j| ≤ 2⁻⁴·P_j + 2⁻¹⁸`, `Σ p̂_j ≥ l·(1 − 2⁻⁴) − Sk·2⁻¹⁸`, and the
/// difference is at most
///
/// `(2⁻⁴ · (Σ P_j |v_j| / l + |r|) + 2⁻¹⁸ · Sk · (max|v| + |r|)) / (1 − 2⁻⁴ − Sk·2⁻¹⁸)`
///
/// where `Σ P_j |v_j| / l` is exactly attention over `|v|` (`abs_ref`). The
/// bf16 rounding of the result adds 2⁻⁹ of it (2⁻⁸ of the reference covers
/// that and the f32 rounding of the scores, which both sides share).
///
/// The scores' f16 rounding moves each score by at most 2⁻¹¹ of its own
/// magnitude, `|S_j| ≤ s_max` (the largest score magnitude of the row
/// set): each `P_j` by a factor within `exp(±2⁻¹¹·s_max)` of the row max's
/// (which moves too, and cancels), so the probabilities get a relative error
/// `ε ≤ exp(2⁻¹⁰·s_max) − 1` before e4m3 rounds them, and the output moves
/// by at most `2ε · (abs_ref + |r|)` more.
fn derived_bound(abs_ref: f32, reference: f32, seq_kv: usize, v_max: f32, s_max: f32) -> f32 {
    let r = reference.abs();
    let tiny = 2f32.powi(-18) * seq_kv as f32;
    let score_rounding = (2f32.powi(-10) * s_max).exp_m1();
    (2f32.powi(-4) * (abs_ref + r) + tiny * (v_max + r)) / (1.0 - 2f32.powi(-4) - tiny)
        + 2.0 * score_rounding * (abs_ref + r)
        + 2f32.powi(-8) * r
        + 1e-6
}

/// The largest Euclidean norm of the `d`-wide rows of `data`.
fn max_row_norm(data: &[f32], d: usize) -> f32 {
    data.chunks(d)
        .map(|row| row.iter().map(|x| x * x).sum::<f32>().sqrt())
        .fold(0.0, f32::max)
}

/// One random case: `[b, sq, h, d]` queries over `sk` keys, q multiplied by
/// `sharpness` (1: flat scores; 6: a few keys dominate each row). Returns
/// the relative L2 distance from the unrounded attention.
fn random_case(dims: [usize; 4], sk: usize, sharpness: f32, seed: u32) -> f64 {
    let [b, sq, h, d] = dims;
    let mut hs = Harness::new();
    let q_data: Vec<f32> = pseudo_random(b * sq * h * d, seed)
        .iter()
        .map(|x| x * sharpness)
        .collect();
    let (_, q8, qs) = quantized_input(&mut hs, "q", &[b, sq, h, d], q_data, 16.0);
    let (_, k8, ks) = quantized_input(
        &mut hs,
        "k",
        &[b, sk, h, d],
        pseudo_random(b * sk * h * d, seed + 1),
        16.0,
    );
    let v_data = pseudo_random(b * sk * h * d, seed + 2);
    // v goes in unquantized: the op quantizes it as `quantize` does.
    let (v_in, v8, vs) = quantized_input(&mut hs, "v", &[b, sk, h, d], v_data, 448.0);
    let scale = 1.0 / (d as f32).sqrt();
    let out =
        hs.b.scaled_attention(q8, qs, k8, ks, v_in, vs, scale)
            .unwrap();
    assert_eq!(hs.b.ty(out).dtype, DType::BF16);
    let q = dequantized(&mut hs, q8, qs);
    let k = dequantized(&mut hs, k8, ks);
    let v = dequantized(&mut hs, v8, vs);
    let attention = Op::Attention {
        scale: Scalar(scale),
    };
    let reference = hs.b.op(attention.clone(), &[q, k, v]).unwrap();
    let v_abs = hs.b.unary(UnaryOp::Abs, v).unwrap();
    let abs_ref = hs.b.op(attention, &[q, k, v_abs]).unwrap();
    let values = hs.run_all(&[out, reference, abs_ref, v_abs, q, k]);
    let [out, reference, abs_ref, v_abs, q, k] = [0, 1, 2, 3, 4, 5].map(|i| &values[i]);
    let v_max = v_abs.data.iter().copied().fold(0.0, f32::max);
    // Cauchy–Schwarz: no score is larger than this.
    let s_max = max_row_norm(&q.data, d) * max_row_norm(&k.data, d) * scale;
    for (i, ((&o, &r), &a)) in out
        .data
        .iter()
        .zip(&reference.data)
        .zip(&abs_ref.data)
        .enumerate()
    {
        assert_eq!(DType::BF16.round(o), o, "element {i} is not a bf16 value");
        let bound = derived_bound(a, r, sk, v_max, s_max);
        assert!(
            (o - r).abs() <= bound,
            "element {i}: {o} vs {r}, bound {bound} ({dims:?}, sk {sk})"
        );
    }
    out.rel_l2(reference)
}

#[test]
fn hand_checked_two_rows_over_two_keys() {
    // One batch, one head, D = 1, scale 1. q = [1, 2], k = [0, −1],
    // v = [1, −2] (quantized by the op to v8 = [2, −4] with scale 0.5). All
    // are e4m3 values.
    let mut hs = Harness::new();
    let one = |hs: &mut Harness, name: &str, value: f32| hs.input(name, &[1], vec![value]);
    let q8 = hs.input_typed("q8", E4M3, &[1, 2, 1, 1], vec![1.0, 2.0]);
    let k8 = hs.input_typed("k8", E4M3, &[1, 2, 1, 1], vec![0.0, -1.0]);
    let v = hs.input_typed("v", DType::BF16, &[1, 2, 1, 1], vec![1.0, -2.0]);
    let (qs, ks, vs) = (
        one(&mut hs, "qs", 1.0),
        one(&mut hs, "ks", 1.0),
        one(&mut hs, "vs", 0.5),
    );
    let out = hs.b.scaled_attention(q8, qs, k8, ks, v, vs, 1.0).unwrap();
    let out = hs.run(out);
    // Row 0: S = [0, −1], m = 0, P = [1, e⁻¹ = 0.36788].
    //   256·P = [256, 94.18]; e4m3 steps by 8 in [64, 128): 94.18 → 96,
    //   so p̂ = [1, 0.375], Σ p̂ = 1.375. out = (1 − 2·0.375)/1.375 =
    //   0.181818, and bf16 (step 2⁻¹⁰ in [0.125, 0.25)) gives 186·2⁻¹⁰ =
    //   0.181640625. (Unrounded: (1 − 2·0.36788)/1.36788 = 0.19318.)
    // Row 1: S = [0, −2], P = [1, e⁻² = 0.135335].
    //   256·P = [256, 34.65]; steps of 4 in [32, 64): 34.65 → 36, so
    //   p̂ = [1, 0.140625], Σ p̂ = 1.140625. out = (1 − 2·0.140625)/1.140625
    //   = 0.630137, bf16 (step 2⁻⁸ in [0.5, 1)) gives 161·2⁻⁸ = 0.62890625.
    assert_eq!(out.shape.dims(), &[1, 2, 1, 1]);
    assert_eq!(out.data, vec![0.181_640_63, 0.628_906_25]);
}

#[test]
fn scores_are_rounded_to_f16() {
    // D = 2, scale 1, unit scales. q8 = [448, 1.5]; key 0 = [5, 1] gives
    // 2241.5, which f16 (step 2 in [2048, 4096)) rounds to 2242; key 1 =
    // [5, 0] gives 2240 exactly. So S = [2242, 2240]: the row of the
    // hand-checked case above with S = [0, −2], P = [1, e⁻²], out =
    // 0.62890625 after bf16. (Unrounded scores, 1.5 apart, would give
    // p̂₁ = e4m3(256·e^−1.5 = 57.1)/256 = 56/256 and out ≈ 0.4615.)
    let mut hs = Harness::new();
    let q8 = hs.input_typed("q8", E4M3, &[1, 1, 1, 2], vec![448.0, 1.5]);
    let k8 = hs.input_typed("k8", E4M3, &[1, 2, 1, 2], vec![5.0, 1.0, 5.0, 0.0]);
    let v = hs.input_typed("v", DType::BF16, &[1, 2, 1, 2], vec![1.0, 1.0, -2.0, -2.0]);
    let one = hs.input("one", &[1], vec![1.0]);
    let vs = hs.input("vs", &[1], vec![0.5]);
    let out = hs.b.scaled_attention(q8, one, k8, one, v, vs, 1.0).unwrap();
    assert_eq!(hs.run(out).data, vec![0.628_906_25, 0.628_906_25]);
}

#[test]
fn a_score_past_f16_rounds_to_infinity() {
    // 448 · 448 · 2 = 401408 > 65504: the score is +∞, outside the op's
    // domain (the kernel's result is undefined); here the row is NaN.
    let mut hs = Harness::new();
    let q8 = hs.input_typed("q8", E4M3, &[1, 1, 1, 2], vec![448.0, 448.0]);
    let k8 = hs.input_typed("k8", E4M3, &[1, 2, 1, 2], vec![448.0, 448.0, 1.0, 1.0]);
    let v = hs.input_typed("v", DType::BF16, &[1, 2, 1, 2], vec![1.0; 4]);
    let one = hs.input("one", &[1], vec![1.0]);
    let out =
        hs.b.scaled_attention(q8, one, k8, one, v, one, 1.0)
            .unwrap();
    assert!(hs.run(out).data.iter().all(|x| x.is_nan()));
}

#[test]
fn scales_dequantize_each_operand() {
    // The same case with every operand's values halved and its scale
    // doubled gives the same result; doubling only v's scale (v itself
    // doubled, so that it quantizes to the same v8) doubles it.
    let run = |q: f32, qs: f32, vs: f32| {
        let mut hs = Harness::new();
        let q8 = hs.input_typed("q8", E4M3, &[1, 2, 1, 1], vec![q, 2.0 * q]);
        let k8 = hs.input_typed("k8", E4M3, &[1, 2, 1, 1], vec![0.0, -1.0]);
        let v8 = hs.input_typed("v", DType::BF16, &[1, 2, 1, 1], vec![2.0 * vs, -4.0 * vs]);
        let qs = hs.input("qs", &[1], vec![qs]);
        let ks = hs.input("ks", &[1], vec![1.0]);
        let vs = hs.input("vs", &[1], vec![vs]);
        let out = hs.b.scaled_attention(q8, qs, k8, ks, v8, vs, 1.0).unwrap();
        hs.run(out).data
    };
    let base = run(1.0, 1.0, 0.5);
    assert_eq!(run(0.5, 2.0, 0.5), base);
    let doubled: Vec<f32> = base.iter().map(|x| 2.0 * x).collect();
    assert_eq!(run(1.0, 1.0, 1.0), doubled);
}

#[test]
fn close_to_attention_over_the_dequantized_operands() {
    let mut errors = Vec::new();
    for (dims, sk, sharpness, seed) in [
        ([1, 4, 1, 16], 37, 1.0, 10),
        ([2, 5, 2, 16], 37, 6.0, 20),
        ([1, 3, 3, 32], 130, 6.0, 30),
        ([2, 7, 2, 8], 130, 1.0, 40),
    ] {
        let error = random_case(dims, sk, sharpness, seed);
        assert!(error <= REL_L2_BOUND, "{dims:?} sk {sk}: {error:e}");
        // The probabilities were rounded: the two differ.
        assert!(error > 1e-3, "{dims:?} sk {sk}: {error:e}");
        errors.push(error);
    }
    let text: Vec<String> = errors.iter().map(|e| format!("{e:.2e}")).collect();
    println!("relative L2 vs attention over dequantized operands: {text:?}");
}

#[test]
fn one_key_is_exact_but_for_bf16() {
    // One key: P = 1 is stored exactly (256 is an e4m3 value), so the
    // output is v itself, rounded to bf16.
    let error = random_case([2, 3, 2, 16], 1, 6.0, 50);
    assert!(error <= 2f64.powi(-8), "{error:e}");
}

#[test]
fn prints_with_its_scale_and_verifies() {
    let mut b = GraphBuilder::new();
    let q8 = b.input("q8", E4M3, [1, 3, 2, 8]).unwrap();
    let k8 = b.input("k8", E4M3, [1, 5, 2, 8]).unwrap();
    let v = b.input("v", DType::BF16, [1, 5, 2, 8]).unwrap();
    let s = b.input("s", DType::F32, [1]).unwrap();
    let o = b.scaled_attention(q8, s, k8, s, v, s, 0.25).unwrap();
    b.output("o", o).unwrap();
    let mut g = b.finish().unwrap();
    let text = print_graph(&g).unwrap();
    assert!(
        text.contains("%4: bf16[1,3,2,8] = scaled_attention[scale=0.25](%0, %3, %1, %3, %2, %3)"),
        "{text}"
    );
    verify(&g).unwrap();
    g.node_mut(o).ty = fluxc_ir::TensorType::new(DType::F32, [1, 3, 2, 8]);
    let err = verify(&g).unwrap_err().to_string();
    assert!(err.contains("stored as f32[1,3,2,8]"), "{err}");
}
