//! Integration tests of the interpreter's fp8 ops: `DynamicScale`,
//! `Quantize` and `ScaledLinear` (torchao's float8 dynamic quantization).
//!
//! Small hand-made cases check exact values: per-tensor and per-row scales
//! (including all-zero and NaN inputs), rounding of a value halfway between
//! two e4m3 values, saturation at ±448, and `scaled_linear` against a naive
//! formula written here with both scale granularities, with and without a
//! bias. On random data, quantize → scaled_linear must approximate the f32
//! linear within 5% relative L2 (e4m3 keeps 3 mantissa bits; about 3.5% is typical).

mod common;

use common::{assert_exact, pseudo_random, Harness};

use fluxc_ir::interp::Tensor;
use fluxc_ir::{DType, GraphBuilder};

const E4M3: DType = DType::F8E4M3;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `dynamic_scale` on `x`.
fn scale_of(shape: &[usize], data: Vec<f32>, per_row: bool) -> Tensor {
    let mut h = Harness::new();
    let x = h.input("x", shape, data);
    let s = h.b.dynamic_scale(x, E4M3, per_row).unwrap();
    h.run(s)
}

/// Runs `quantize` of `x` with a fed scale.
fn quantize_with(x: (&[usize], Vec<f32>), scale: (&[usize], Vec<f32>)) -> Tensor {
    let mut h = Harness::new();
    let xi = h.input("x", x.0, x.1);
    let s = h.input("scale", scale.0, scale.1);
    let q = h.b.quantize(xi, s, E4M3).unwrap();
    assert_eq!(h.b.ty(q).dtype, E4M3);
    h.run(q)
}

// ---------------------------------------------------------------------------
// DynamicScale
// ---------------------------------------------------------------------------

#[test]
fn dynamic_scale_per_tensor_is_amax_over_448() {
    let s = scale_of(&[2, 3], vec![1.0, -3.0, 0.5, 2.0, -0.25, 0.0], false);
    assert_exact(&s, &[1], &[3.0 / 448.0]);
}

#[test]
fn dynamic_scale_per_row_reduces_the_last_axis() {
    let s = scale_of(&[2, 3], vec![1.0, -3.0, 0.5, 2.0, -0.25, 0.0], true);
    assert_exact(&s, &[2, 1], &[3.0 / 448.0, 2.0 / 448.0]);
    // Rank 3: one scale per row of the last axis, leading dims kept.
    let data = vec![1.0, -2.0, 4.0, 0.5, -8.0, 1.0, 0.25, 0.0];
    let s = scale_of(&[2, 2, 2], data, true);
    let expected = [2.0 / 448.0, 4.0 / 448.0, 8.0 / 448.0, 0.25 / 448.0];
    assert_exact(&s, &[2, 2, 1], &expected);
}

#[test]
fn dynamic_scale_of_zeros_is_clamped_at_1e_12() {
    assert_exact(&scale_of(&[3], vec![0.0; 3], false), &[1], &[1e-12 / 448.0]);
    let s = scale_of(&[2, 2], vec![0.0, -0.0, 2.0, 1.0], true);
    assert_exact(&s, &[2, 1], &[1e-12 / 448.0, 2.0 / 448.0]);
}

#[test]
fn dynamic_scale_for_e5m2_uses_its_max() {
    let mut h = Harness::new();
    let x = h.input("x", &[2], vec![-7.0, 3.0]);
    let s = h.b.dynamic_scale(x, DType::F8E5M2, false).unwrap();
    assert_exact(&h.run(s), &[1], &[7.0 / 57344.0]);
}

#[test]
fn dynamic_scale_propagates_nan() {
    let s = scale_of(&[3], vec![1.0, f32::NAN, 2.0], false);
    assert!(s.data[0].is_nan());
    // NaN first, last, or in one row only.
    assert!(scale_of(&[2], vec![f32::NAN, 5.0], false).data[0].is_nan());
    assert!(scale_of(&[2], vec![5.0, f32::NAN], false).data[0].is_nan());
    let s = scale_of(&[2, 2], vec![1.0, 2.0, f32::NAN, 4.0], true);
    assert_eq!(s.data[0], 2.0 / 448.0);
    assert!(s.data[1].is_nan());
}

// ---------------------------------------------------------------------------
// Quantize
// ---------------------------------------------------------------------------

#[test]
fn quantize_divides_by_the_scale_and_rounds_to_e4m3() {
    // Scale 0.5 doubles: 0.53125 → 1.0625, halfway between e4m3 neighbours
    // 1.0 and 1.125, ties to the even mantissa (1.0); 0.59375 → 1.1875,
    // halfway between 1.125 and 1.25, goes to 1.25. 0.54 → 1.08 → 1.125.
    let x = vec![0.53125, 0.59375, 0.54, -0.53125, 3.0, 0.0];
    let q = quantize_with((&[6], x), (&[1], vec![0.5]));
    assert_exact(&q, &[6], &[1.0, 1.25, 1.125, -1.0, 6.0, 0.0]);
}

#[test]
fn quantize_saturates_at_448() {
    let x = vec![
        448.0,
        449.0,
        464.0,
        1e6,
        -500.0,
        f32::INFINITY,
        -f32::INFINITY,
    ];
    let q = quantize_with((&[7], x), (&[1], vec![1.0]));
    let expected = [448.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0];
    assert_exact(&q, &[7], &expected);
}

#[test]
fn quantize_rounds_subnormals_to_even() {
    // 2^-10 is halfway between 0 and the smallest subnormal 2^-9 (ties to
    // 0); 3·2^-10 is halfway between 2^-9 and 2^-8 (ties to 2^-8).
    let x = vec![2f32.powi(-10), 3.0 * 2f32.powi(-10), 2f32.powi(-9)];
    let q = quantize_with((&[3], x), (&[1], vec![1.0]));
    assert_exact(&q, &[3], &[0.0, 2f32.powi(-8), 2f32.powi(-9)]);
}

#[test]
fn quantize_uses_one_scale_per_row() {
    let x = vec![1.0, 2.0, 1.0, 2.0, 3.0, -6.0];
    let q = quantize_with((&[3, 2], x), (&[3, 1], vec![1.0, 0.25, 2.0]));
    assert_exact(&q, &[3, 2], &[1.0, 2.0, 4.0, 8.0, 1.5, -3.0]);
}

#[test]
fn quantize_keeps_nan() {
    let q = quantize_with((&[2], vec![f32::NAN, 1.0]), (&[1], vec![1.0]));
    assert!(q.data[0].is_nan());
    assert_eq!(q.data[1], 1.0);
}

#[test]
fn dynamic_quantization_maps_amax_to_448() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3], vec![3.0, -1.5, 0.75, -0.5, 0.25, 0.125]);
    let st = h.b.dynamic_scale(x, E4M3, false).unwrap();
    let qt = h.b.quantize(x, st, E4M3).unwrap();
    let sr = h.b.dynamic_scale(x, E4M3, true).unwrap();
    let qr = h.b.quantize(x, sr, E4M3).unwrap();
    let outs = h.run_all(&[qt, qr]);
    assert_exact(
        &outs[0],
        &[2, 3],
        &[448.0, -224.0, 112.0, -72.0, 36.0, 18.0],
    );
    assert_exact(
        &outs[1],
        &[2, 3],
        &[448.0, -224.0, 112.0, -448.0, 224.0, 112.0],
    );
}

#[test]
fn quantized_random_values_are_e4m3_values_reaching_448() {
    let mut h = Harness::new();
    let data: Vec<f32> = pseudo_random(4 * 16, 7).iter().map(|v| v * 5.0).collect();
    let x = h.input("x", &[4, 16], data);
    let st = h.b.dynamic_scale(x, E4M3, false).unwrap();
    let qt = h.b.quantize(x, st, E4M3).unwrap();
    let sr = h.b.dynamic_scale(x, E4M3, true).unwrap();
    let qr = h.b.quantize(x, sr, E4M3).unwrap();
    let outs = h.run_all(&[qt, qr]);
    for q in &outs {
        for &v in &q.data {
            assert_eq!(E4M3.round(v), v, "{v} is not an e4m3 value");
            assert!(v.abs() <= 448.0);
        }
    }
    let amax = |vals: &[f32]| vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(amax(&outs[0].data), 448.0);
    for row in outs[1].data.chunks(16) {
        assert_eq!(amax(row), 448.0);
    }
}

// ---------------------------------------------------------------------------
// ScaledLinear
// ---------------------------------------------------------------------------

/// `(Σ_k xq[r,k]·wq[n,k]) · xs[r or 0] · ws[n or 0] (+ b[n])` in f64.
fn naive_scaled_linear(
    xq: &[f32],
    xs: &[f32],
    wq: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    k: usize,
) -> Vec<f32> {
    let rows = xq.len() / k;
    let n = wq.len() / k;
    let mut out = Vec::new();
    for r in 0..rows {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                acc += xq[r * k + p] as f64 * wq[j * k + p] as f64;
            }
            acc *= xs[if xs.len() == 1 { 0 } else { r }] as f64;
            acc *= ws[if ws.len() == 1 { 0 } else { j }] as f64;
            if let Some(b) = bias {
                acc += b[j] as f64;
            }
            out.push(acc as f32);
        }
    }
    out
}

/// Builds and runs one scaled linear over fed fp8 operands `xq [2,3,4]` and
/// `wq [3,4]` with the given scale shapes, and compares it exactly with the
/// naive formula (all values are small dyadic numbers, so both are exact).
fn check_scaled_linear(xs_shape: &[usize], ws_shape: &[usize], with_bias: bool) {
    let k = 4;
    // Small integers and halves: all exactly representable in e4m3.
    let xq: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.5 - 2.0).collect();
    let wq: Vec<f32> = (0..12).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
    let xs: Vec<f32> = (0..xs_shape.iter().product::<usize>())
        .map(|i| 0.25 * (i + 1) as f32)
        .collect();
    let ws: Vec<f32> = (0..ws_shape.iter().product::<usize>())
        .map(|i| 0.5 * (i + 2) as f32)
        .collect();
    let bias = vec![1.5, -0.25, 3.0];

    let mut h = Harness::new();
    let xqi = h.input_typed("xq", E4M3, &[2, 3, k], xq.clone());
    let xsi = h.input("xs", xs_shape, xs.clone());
    let wqi = h.input_typed("wq", E4M3, &[3, k], wq.clone());
    let wsi = h.input("ws", ws_shape, ws.clone());
    let b = with_bias.then(|| h.weight("b", &[3], bias.clone()));
    let y =
        h.b.scaled_linear(xqi, xsi, wqi, wsi, b, DType::F32)
            .unwrap();
    assert_eq!(h.b.shape(y), &[2, 3, 3]);
    let out = h.run(y);

    for v in xq.iter().chain(&wq) {
        assert_eq!(E4M3.round(*v), *v, "test data must be e4m3 values");
    }
    let bias = with_bias.then_some(bias.as_slice());
    let expected = naive_scaled_linear(&xq, &xs, &wq, &ws, bias, k);
    assert_exact(&out, &[2, 3, 3], &expected);
}

#[test]
fn scaled_linear_per_tensor_scales() {
    check_scaled_linear(&[1], &[1], false);
}

#[test]
fn scaled_linear_per_row_scales() {
    check_scaled_linear(&[2, 3, 1], &[3, 1], false);
}

#[test]
fn scaled_linear_mixed_scales_and_bias() {
    check_scaled_linear(&[2, 3, 1], &[1], true);
    check_scaled_linear(&[1], &[3, 1], true);
    check_scaled_linear(&[2, 3, 1], &[3, 1], true);
}

#[test]
fn scaled_linear_hand_values() {
    // xq = [[1, 2], [3, 4]], wq = [[1, 0], [1, 1]]: dots [[1, 3], [3, 7]].
    // xs per row = [0.5, 2], ws per channel = [1, 0.25], bias [10, 20].
    let mut h = Harness::new();
    let xq = h.input_typed("xq", E4M3, &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let xs = h.input("xs", &[2, 1], vec![0.5, 2.0]);
    let wq = h.input_typed("wq", E4M3, &[2, 2], vec![1.0, 0.0, 1.0, 1.0]);
    let ws = h.input("ws", &[2, 1], vec![1.0, 0.25]);
    let b = h.weight("b", &[2], vec![10.0, 20.0]);
    let y =
        h.b.scaled_linear(xq, xs, wq, ws, Some(b), DType::F32)
            .unwrap();
    let expected = [10.5, 20.375, 16.0, 23.5];
    assert_exact(&h.run(y), &[2, 2], &expected);
}

#[test]
fn scaled_linear_declares_its_output_dtype() {
    let mut b = GraphBuilder::new();
    let xq = b.input("xq", E4M3, [4, 8]).unwrap();
    let xs = b.input("xs", DType::F32, [1]).unwrap();
    let wq = b.input("wq", E4M3, [2, 8]).unwrap();
    let ws = b.input("ws", DType::F32, [2, 1]).unwrap();
    let bias = b.input("b", DType::BF16, [2]).unwrap();
    let y = b
        .scaled_linear(xq, xs, wq, ws, Some(bias), DType::BF16)
        .unwrap();
    assert_eq!(b.ty(y).dtype, DType::BF16);
    assert_eq!(b.shape(y), &[4, 2]);
    // A bias in another dtype than the output is rejected.
    let bias32 = b.input("b32", DType::F32, [2]).unwrap();
    assert!(b
        .scaled_linear(xq, xs, wq, ws, Some(bias32), DType::BF16)
        .is_err());
    // Unquantized operands are rejected.
    let x = b.input("x", DType::F32, [4, 8]).unwrap();
    assert!(b.scaled_linear(x, xs, wq, ws, None, DType::F32).is_err());
}

#[test]
fn builder_rejects_bad_scale_shapes() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [4, 8]).unwrap();
    let bad = b.input("s", DType::F32, [4]).unwrap();
    let err = b.quantize(x, bad, E4M3).unwrap_err().to_string();
    assert!(err.contains("quantize"), "{err}");
    let s = b.dynamic_scale(x, E4M3, true).unwrap();
    assert_eq!(b.shape(s), &[4, 1]);
    assert!(b.quantize(x, s, DType::BF16).is_err());
    assert!(b.dynamic_scale(x, DType::F16, false).is_err());
}

// ---------------------------------------------------------------------------
// End to end: quantized linear vs f32 linear
// ---------------------------------------------------------------------------

/// Relative L2 error of the fp8 linear (both operands dynamically quantized)
/// against the f32 linear on random data.
fn quantized_linear_error(per_row: bool, seed: u32) -> f64 {
    let (rows, k, n) = (16, 64, 24);
    let mut h = Harness::new();
    // Rows with different magnitudes, as activations have.
    let xdata: Vec<f32> = pseudo_random(rows * k, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / k) as f32))
        .collect();
    let x = h.input("x", &[2, rows / 2, k], xdata);
    let w = h.weight("w", &[n, k], pseudo_random(n * k, seed + 1));
    let bias = h.weight("b", &[n], pseudo_random(n, seed + 2));
    let reference = h.b.linear(x, w, Some(bias)).unwrap();
    let xs = h.b.dynamic_scale(x, E4M3, per_row).unwrap();
    let xq = h.b.quantize(x, xs, E4M3).unwrap();
    let ws = h.b.dynamic_scale(w, E4M3, per_row).unwrap();
    let wq = h.b.quantize(w, ws, E4M3).unwrap();
    let y =
        h.b.scaled_linear(xq, xs, wq, ws, Some(bias), DType::F32)
            .unwrap();
    let outs = h.run_all(&[reference, y]);
    outs[1].rel_l2(&outs[0])
}

#[test]
fn quantized_linear_approximates_f32_linear() {
    for seed in [1, 2, 3] {
        for per_row in [false, true] {
            let err = quantized_linear_error(per_row, seed);
            // e4m3 rounds each operand with a relative RMS error of about
            // 2.5% (3 mantissa bits); both operands are rounded, and in a
            // dot product of random-sign terms the relative error does not
            // shrink, so ~3.5% is expected.
            assert!(err < 5e-2, "per_row={per_row} seed={seed}: {err}");
            // And quantization did happen.
            assert!(err > 1e-4, "per_row={per_row} seed={seed}: {err}");
        }
    }
}
