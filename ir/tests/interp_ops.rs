//! Integration tests of the CPU reference interpreter (`fluxc_ir::interp`).
//!
//! Every op is built through the public [`GraphBuilder`], run with
//! [`interp::run`], and compared against values computed independently here:
//! hand-worked small cases, or naive formulas written with explicit index
//! math (e.g. an NCHW direct convolution, a per-head attention loop, diffusers'
//! timestep-embedding formula in f64). Also covered: rounding of fed inputs to
//! their declared dtype, the interpreter's input errors, and `Tensor::rel_l2`.

mod common;

use common::{assert_exact, pseudo_random, Harness};

use std::collections::HashMap;
use std::f64::consts::PI;

use fluxc_ir::interp::{self, InterpError, Tensor};
use fluxc_ir::{BinaryOp, DType, GraphBuilder, Op, Scalar, Shape, TimestepParams, UnaryOp};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `0, 1, 2, ...` as f32.
fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

/// Asserts shape equality and elementwise `|a - e| <= tol · (1 + |e|)`.
fn assert_close(actual: &Tensor, shape: &[usize], expected: &[f32], tol: f32) {
    assert_eq!(actual.shape, Shape::from(shape), "shape");
    assert_eq!(actual.data.len(), expected.len(), "element count");
    for (i, (&a, &e)) in actual.data.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "element {i}: got {a}, expected {e} (tol {tol})\nactual:   {:?}\nexpected: {expected:?}",
            actual.data
        );
    }
}

/// Row-major flat index of `idx` in a tensor of dims `dims`.
fn flat(dims: &[usize], idx: &[usize]) -> usize {
    assert_eq!(dims.len(), idx.len());
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| {
        assert!(i < d);
        acc * d + i
    })
}

/// Multi-index of flat position `pos` in a tensor of dims `dims`.
fn unflat(dims: &[usize], mut pos: usize) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for a in (0..dims.len()).rev() {
        idx[a] = pos % dims[a];
        pos /= dims[a];
    }
    idx
}

// ---------------------------------------------------------------------------
// Unary
// ---------------------------------------------------------------------------

/// Runs `op` on `xs` and compares with `expected`.
fn check_unary_values(op: UnaryOp, xs: &[f32], expected: &[f32], tol: f32) {
    let mut h = Harness::new();
    let x = h.input("x", &[xs.len()], xs.to_vec());
    let y = h.b.unary(op, x).unwrap();
    assert_close(&h.run(y), &[xs.len()], expected, tol);
}

/// Runs `op` on `xs` and compares with `f` evaluated in f64.
fn check_unary(op: UnaryOp, xs: &[f32], f: impl Fn(f64) -> f64, tol: f32) {
    let expected: Vec<f32> = xs.iter().map(|&v| f(v as f64) as f32).collect();
    check_unary_values(op, xs, &expected, tol);
}

#[test]
fn unary_neg_and_abs_are_exact() {
    let xs = [-2.5, -0.0, 0.0, 1.0, 3.25];
    let mut h = Harness::new();
    let x = h.input("x", &[5], xs.to_vec());
    let y = h.b.unary(UnaryOp::Neg, x).unwrap();
    assert_exact(&h.run(y), &[5], &[2.5, 0.0, -0.0, -1.0, -3.25]);

    let mut h = Harness::new();
    let x = h.input("x", &[5], xs.to_vec());
    let y = h.b.unary(UnaryOp::Abs, x).unwrap();
    assert_exact(&h.run(y), &[5], &[2.5, 0.0, 0.0, 1.0, 3.25]);
}

#[test]
fn unary_exp_and_log() {
    check_unary(UnaryOp::Exp, &[-2.0, 0.0, 1.0, 3.5], f64::exp, 1e-6);
    check_unary(
        UnaryOp::Log,
        &[0.25, 1.0, std::f32::consts::E, 100.0],
        f64::ln,
        1e-6,
    );
    // Hand values.
    check_unary_values(UnaryOp::Exp, &[0.0, 1.0], &[1.0, std::f32::consts::E], 1e-7);
    check_unary_values(
        UnaryOp::Log,
        &[1.0, 8.0],
        &[0.0, 3.0 * std::f32::consts::LN_2],
        1e-7,
    );
}

#[test]
fn unary_sqrt_rsqrt_recip_square() {
    check_unary(UnaryOp::Sqrt, &[0.0, 0.25, 4.0, 2.0], f64::sqrt, 1e-6);
    check_unary(UnaryOp::Rsqrt, &[0.25, 4.0, 2.0], |x| 1.0 / x.sqrt(), 1e-6);
    check_unary(UnaryOp::Recip, &[-4.0, 0.5, 3.0], |x| 1.0 / x, 1e-6);
    check_unary(UnaryOp::Square, &[-3.0, 0.5, 1.5], |x| x * x, 0.0);
    // Hand values, exact.
    check_unary_values(UnaryOp::Sqrt, &[9.0, 0.25], &[3.0, 0.5], 0.0);
    check_unary_values(UnaryOp::Rsqrt, &[4.0, 16.0], &[0.5, 0.25], 0.0);
    check_unary_values(UnaryOp::Recip, &[-4.0, 0.5], &[-0.25, 2.0], 0.0);
    check_unary_values(UnaryOp::Square, &[-3.0, 0.5], &[9.0, 0.25], 0.0);
}

#[test]
fn unary_trig_and_tanh() {
    let xs = [-3.0, -0.5, 0.0, 1.0, 2.5];
    check_unary(UnaryOp::Sin, &xs, f64::sin, 1e-6);
    check_unary(UnaryOp::Cos, &xs, f64::cos, 1e-6);
    check_unary(UnaryOp::Tanh, &xs, f64::tanh, 1e-6);
    check_unary_values(UnaryOp::Sin, &[0.0], &[0.0], 0.0);
    check_unary_values(UnaryOp::Cos, &[0.0], &[1.0], 0.0);
    check_unary_values(UnaryOp::Tanh, &[0.0, 20.0, -20.0], &[0.0, 1.0, -1.0], 0.0);
}

#[test]
fn unary_sigmoid_hand_values_and_saturation() {
    check_unary_values(UnaryOp::Sigmoid, &[0.0], &[0.5], 0.0);
    // e^x / (1 + e^x), the algebraically equal form.
    check_unary(
        UnaryOp::Sigmoid,
        &[-2.0, 1.0, 4.0],
        |x| x.exp() / (1.0 + x.exp()),
        1e-6,
    );
    // Large magnitudes saturate cleanly instead of producing NaN.
    check_unary_values(UnaryOp::Sigmoid, &[-200.0, 200.0], &[0.0, 1.0], 0.0);
}

#[test]
fn unary_silu_hand_values() {
    // x / (1 + e^-x), values from an independent evaluation.
    check_unary_values(
        UnaryOp::Silu,
        &[-2.0, -1.0, 0.0, 1.0, 2.0],
        &[-0.238_405_84, -0.268_941_43, 0.0, 0.731_058_6, 1.761_594_2],
        1e-6,
    );
    // Silu(x) = x · sigmoid(x) for arbitrary x.
    let xs = pseudo_random(16, 1)
        .iter()
        .map(|v| v * 6.0)
        .collect::<Vec<_>>();
    check_unary(UnaryOp::Silu, &xs, |x| x / (1.0 + (-x).exp()), 1e-6);
}

#[test]
fn unary_gelu_tanh_matches_the_tanh_formula() {
    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written out in f32.
    let gelu = |x: f32| {
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
    };
    let xs: Vec<f32> = pseudo_random(32, 2).iter().map(|v| v * 5.0).collect();
    let mut h = Harness::new();
    let x = h.input("x", &[32], xs.clone());
    let y = h.b.gelu_tanh(x).unwrap();
    let expected: Vec<f32> = xs.iter().map(|&v| gelu(v)).collect();
    assert_close(&h.run(y), &[32], &expected, 1e-5);
}

#[test]
fn unary_gelu_tanh_hand_values() {
    let xs = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0];
    // Evaluated independently in double precision.
    let expected: Vec<f32> = [
        -0.003_637_392_081_772_994_f64,
        -0.158_808_009_391_723_24,
        -0.154_285_990_174_856_06,
        0.0,
        0.345_714_009_825_143_94,
        0.841_191_990_608_276_8,
        1.954_597_694_087_775,
        2.996_362_607_918_227,
    ]
    .iter()
    .map(|&v| v as f32)
    .collect();
    let mut h = Harness::new();
    let x = h.input("x", &[8], xs.to_vec());
    let y = h.b.unary(UnaryOp::GeluTanh, x).unwrap();
    assert_close(&h.run(y), &[8], &expected, 1e-6);
}

// ---------------------------------------------------------------------------
// Binary and BinaryScalar
// ---------------------------------------------------------------------------

fn run_binary(op: BinaryOp, a: (&[usize], Vec<f32>), b: (&[usize], Vec<f32>)) -> Tensor {
    let mut h = Harness::new();
    let x = h.input("a", a.0, a.1);
    let y = h.input("b", b.0, b.1);
    let z = h.b.binary(op, x, y).unwrap();
    h.run(z)
}

#[test]
fn binary_same_shape_all_ops() {
    let a = vec![1.0, -2.0, 3.0, 4.0];
    let b = vec![2.0, 5.0, -1.0, 4.0];
    let cases: [(BinaryOp, [f32; 4]); 6] = [
        (BinaryOp::Add, [3.0, 3.0, 2.0, 8.0]),
        (BinaryOp::Sub, [-1.0, -7.0, 4.0, 0.0]),
        (BinaryOp::Mul, [2.0, -10.0, -3.0, 16.0]),
        (BinaryOp::Div, [0.5, -0.4, -3.0, 1.0]),
        (BinaryOp::Max, [2.0, 5.0, 3.0, 4.0]),
        (BinaryOp::Min, [1.0, -2.0, -1.0, 4.0]),
    ];
    for (op, expected) in cases {
        let out = run_binary(op, (&[2, 2], a.clone()), (&[2, 2], b.clone()));
        assert_exact(&out, &[2, 2], &expected);
    }
}

#[test]
fn binary_broadcasts_row_vector_over_matrix() {
    // [2,3] + [3]
    let out = run_binary(
        BinaryOp::Add,
        (&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        (&[3], vec![10.0, 20.0, 30.0]),
    );
    assert_exact(&out, &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    // [3] - [2,3]: the smaller operand on the left.
    let out = run_binary(
        BinaryOp::Sub,
        (&[3], vec![10.0, 20.0, 30.0]),
        (&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    );
    assert_exact(&out, &[2, 3], &[9.0, 18.0, 27.0, 6.0, 15.0, 24.0]);
}

#[test]
fn binary_broadcasts_column_vector() {
    // [2,3] / [2,1]: each row divided by its own scalar.
    let out = run_binary(
        BinaryOp::Div,
        (&[2, 3], vec![2.0, 4.0, 6.0, 9.0, 3.0, 6.0]),
        (&[2, 1], vec![2.0, 3.0]),
    );
    assert_exact(&out, &[2, 3], &[1.0, 2.0, 3.0, 3.0, 1.0, 2.0]);
}

#[test]
fn binary_broadcasts_both_operands_in_different_dims() {
    // [2,1,4] * [3,1] -> [2,3,4]: out[i,j,k] = a[i,0,k] · b[j,0].
    let a: Vec<f32> = iota(8).iter().map(|v| v + 1.0).collect();
    let b = vec![1.0, 10.0, 100.0];
    let expect = |a: &[f32], b: &[f32], swap: bool| {
        let mut e = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    let (x, y) = (a[flat(&[2, 1, 4], &[i, 0, k])], b[flat(&[3, 1], &[j, 0])]);
                    e.push(if swap { y - x } else { x * y });
                }
            }
        }
        e
    };
    let out = run_binary(BinaryOp::Mul, (&[2, 1, 4], a.clone()), (&[3, 1], b.clone()));
    assert_exact(&out, &[2, 3, 4], &expect(&a, &b, false));
    // Operands swapped, with a non-commutative op.
    let out = run_binary(BinaryOp::Sub, (&[3, 1], b.clone()), (&[2, 1, 4], a.clone()));
    assert_exact(&out, &[2, 3, 4], &expect(&a, &b, true));
}

#[test]
fn binary_broadcasts_scalar_like_tensor() {
    let x = vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
    let out = run_binary(BinaryOp::Max, (&[2, 3], x.clone()), (&[1], vec![0.0]));
    assert_exact(&out, &[2, 3], &[1.0, 0.0, 3.0, 0.0, 5.0, 0.0]);
    let out = run_binary(BinaryOp::Div, (&[1], vec![12.0]), (&[2, 3], x.clone()));
    assert_exact(&out, &[2, 3], &[12.0, -6.0, 4.0, -3.0, 2.4, -2.0]);
    let out = run_binary(BinaryOp::Min, (&[1, 1], vec![-1.0]), (&[2, 3], x));
    assert_exact(&out, &[2, 3], &[-1.0, -2.0, -1.0, -4.0, -1.0, -6.0]);
}

#[test]
fn binary_broadcast_matches_naive_index_formula() {
    // [3,1,5,1] + [4,1,6] -> [3,4,5,6], checked element by element.
    let (da, db, dout) = ([3, 1, 5, 1], [4, 1, 6], [3, 4, 5, 6]);
    let a = pseudo_random(15, 3);
    let b = pseudo_random(24, 4);
    let out = run_binary(BinaryOp::Add, (&da, a.clone()), (&db, b.clone()));
    let n: usize = dout.iter().product();
    let expected: Vec<f32> = (0..n)
        .map(|p| {
            let i = unflat(&dout, p);
            let ia = [i[0], 0, i[2], 0];
            let ib = [i[1], 0, i[3]];
            a[flat(&da, &ia)] + b[flat(&db, &ib)]
        })
        .collect();
    assert_exact(&out, &dout, &expected);
}

#[test]
fn binary_scalar_all_ops() {
    let xs = vec![-3.0, 0.5, 4.0];
    let cases: [(BinaryOp, [f32; 3]); 6] = [
        (BinaryOp::Add, [-1.0, 2.5, 6.0]),
        (BinaryOp::Sub, [-5.0, -1.5, 2.0]),
        (BinaryOp::Mul, [-6.0, 1.0, 8.0]),
        (BinaryOp::Div, [-1.5, 0.25, 2.0]),
        (BinaryOp::Max, [2.0, 2.0, 4.0]),
        (BinaryOp::Min, [-3.0, 0.5, 2.0]),
    ];
    for (op, expected) in cases {
        let mut h = Harness::new();
        let x = h.input("x", &[3], xs.clone());
        let y = h.b.scalar(op, x, 2.0).unwrap();
        assert_exact(&h.run(y), &[3], &expected);
    }
}

#[test]
fn binary_scalar_helpers() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let y = h.b.mul_scalar(x, -0.5).unwrap();
    let z = h.b.add_scalar(y, 1.0).unwrap();
    assert_exact(&h.run(z), &[2, 2], &[0.5, 0.0, -0.5, -1.0]);
}

// ---------------------------------------------------------------------------
// Cast and input rounding
// ---------------------------------------------------------------------------

fn run_cast(dtype: DType, xs: &[f32]) -> Tensor {
    let mut h = Harness::new();
    let x = h.input("x", &[xs.len()], xs.to_vec());
    let y = h.b.cast(x, dtype).unwrap();
    assert_eq!(h.b.ty(y).dtype, dtype);
    h.run(y)
}

#[test]
fn cast_to_bf16_rounds_to_nearest_even() {
    let xs = [
        1.0,
        1.0 + 2f32.powi(-9),                  // below half an ulp (2^-8): down
        1.0 + 2f32.powi(-8),                  // exact tie, even neighbour is 1.0
        1.0 + 3.0 * 2f32.powi(-8),            // tie, even neighbour is 1 + 2^-6
        1.0 + 2f32.powi(-8) + 2f32.powi(-12), // above the tie: up
        std::f32::consts::PI,
        -2.0 - 2f32.powi(-7) * 0.75, // rounds to the nearer of -2, -2 - 2^-6
        65_535.0,
    ];
    let expected = [
        1.0,
        1.0,
        1.0,
        1.0 + 2f32.powi(-6),
        1.0 + 2f32.powi(-7),
        3.140_625,
        -2.0,
        65_536.0,
    ];
    assert_exact(&run_cast(DType::BF16, &xs), &[xs.len()], &expected);
}

#[test]
fn cast_to_f8e4m3_rounds_and_saturates_at_448() {
    let xs = [
        1000.0,
        -1000.0,
        449.0,
        500.0,
        448.0,
        f32::INFINITY,
        1.0625,         // tie between 1.0 and 1.125: even -> 1.0
        1.1875,         // tie between 1.125 and 1.25: even -> 1.25
        0.3,            // step 1/32 in [0.25, 0.5): 0.3125
        17.0,           // tie between 16 and 18: even -> 16
        19.0,           // tie between 18 and 20: even -> 20
        2f32.powi(-9),  // smallest subnormal survives
        2f32.powi(-11), // below half the smallest subnormal: 0
    ];
    let expected = [
        448.0,
        -448.0,
        448.0,
        448.0,
        448.0,
        448.0,
        1.0,
        1.25,
        0.3125,
        16.0,
        20.0,
        2f32.powi(-9),
        0.0,
    ];
    assert_exact(&run_cast(DType::F8E4M3, &xs), &[xs.len()], &expected);
}

#[test]
fn cast_to_f8e4m3_keeps_nan() {
    let out = run_cast(DType::F8E4M3, &[f32::NAN, 2.0]);
    assert!(out.data[0].is_nan());
    assert_eq!(out.data[1], 2.0);
}

#[test]
fn cast_to_integer_rounds_half_away_from_zero() {
    let out = run_cast(DType::I32, &[2.5, -2.5, 1.4, -1.6]);
    assert_exact(&out, &[4], &[3.0, -3.0, 1.0, -2.0]);
}

#[test]
fn cast_round_trip_through_bf16_loses_low_bits_only() {
    let mut h = Harness::new();
    let x = h.input("x", &[3], vec![1.0 + 2f32.powi(-10), 256.5, -0.1]);
    let y = h.b.cast(x, DType::BF16).unwrap();
    let z = h.b.cast(y, DType::F32).unwrap();
    assert_eq!(h.b.ty(z).dtype, DType::F32);
    // The bf16 step in [256, 512) is 2: 256.5 rounds down to 256.
    // -0.1 in bf16 is -0.10009765625.
    assert_exact(&h.run(z), &[3], &[1.0, 256.0, -0.100_097_656]);
}

#[test]
fn builder_cast_to_same_dtype_is_identity() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [2]).unwrap();
    assert_eq!(b.cast(x, DType::BF16).unwrap(), x);
    assert_eq!(b.graph().len(), 1);
}

#[test]
fn inputs_are_rounded_to_their_declared_dtype() {
    let mut h = Harness::new();
    let x = h.input_typed("x", DType::BF16, &[3], vec![1.0 + 2f32.powi(-9), 3.0, -1.0]);
    let out = h.run(x);
    assert_exact(&out, &[3], &[1.0, 3.0, -1.0]);

    let mut h = Harness::new();
    let x = h.input_typed("x", DType::F8E4M3, &[2], vec![1000.0, 1.07]);
    assert_exact(&h.run(x), &[2], &[448.0, 1.125]);

    let mut h = Harness::new();
    let x = h.input_typed("ids", DType::I64, &[2], vec![2.4, -3.5]);
    assert_exact(&h.run(x), &[2], &[2.0, -4.0]);

    // f32 inputs pass through untouched.
    let mut h = Harness::new();
    let v = 1.0 + 2f32.powi(-20);
    let x = h.input("x", &[1], vec![v]);
    assert_exact(&h.run(x), &[1], &[v]);
}

#[test]
fn bf16_input_rounding_feeds_downstream_ops() {
    // (1 + 2^-9) rounds to 1 on input, so x - 1 is exactly 0 in the graph.
    let mut h = Harness::new();
    let x = h.input_typed("x", DType::BF16, &[1], vec![1.0 + 2f32.powi(-9)]);
    let y = h.b.add_scalar(x, -1.0).unwrap();
    assert_exact(&h.run(y), &[1], &[0.0]);
}

// ---------------------------------------------------------------------------
// Linear and MatMul
// ---------------------------------------------------------------------------

#[test]
fn linear_without_bias_hand_values() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let w = h.weight("w", &[2, 3], vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]);
    let y = h.b.linear(x, w, None).unwrap();
    // row0: [1-3, 0.5*6] ; row1: [4-6, 0.5*15]
    assert_exact(&h.run(y), &[2, 2], &[-2.0, 3.0, -2.0, 7.5]);
}

#[test]
fn linear_with_bias_hand_values() {
    let mut h = Harness::new();
    let x = h.input("x", &[1, 2], vec![2.0, -1.0]);
    let w = h.weight("w", &[3, 2], vec![1.0, 1.0, 2.0, 0.0, 0.0, 3.0]);
    let bias = h.weight("b", &[3], vec![0.5, -1.0, 10.0]);
    let y = h.b.linear(x, w, Some(bias)).unwrap();
    assert_exact(&h.run(y), &[1, 3], &[1.5, 3.0, 7.0]);
}

#[test]
fn linear_on_3d_input_matches_naive_loops() {
    let (b, s, k, n) = (2, 3, 5, 4);
    let xv = pseudo_random(b * s * k, 5);
    let wv = pseudo_random(n * k, 6);
    let bv = pseudo_random(n, 7);
    let mut h = Harness::new();
    let x = h.input("x", &[b, s, k], xv.clone());
    let w = h.weight("w", &[n, k], wv.clone());
    let bias = h.weight("bias", &[n], bv.clone());
    let y = h.b.linear(x, w, Some(bias)).unwrap();
    let mut expected = vec![0f32; b * s * n];
    for bi in 0..b {
        for si in 0..s {
            for j in 0..n {
                let mut acc = bv[j];
                for p in 0..k {
                    acc += xv[flat(&[b, s, k], &[bi, si, p])] * wv[flat(&[n, k], &[j, p])];
                }
                expected[flat(&[b, s, n], &[bi, si, j])] = acc;
            }
        }
    }
    assert_close(&h.run(y), &[b, s, n], &expected, 1e-5);
}

#[test]
fn matmul_2d_hand_values() {
    let mut h = Harness::new();
    let a = h.input("a", &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let b = h.input("b", &[2, 2], vec![5.0, 6.0, 7.0, 8.0]);
    let c = h.b.matmul(a, b).unwrap();
    assert_exact(&h.run(c), &[2, 2], &[19.0, 22.0, 43.0, 50.0]);
}

#[test]
fn matmul_non_square_hand_values() {
    // [1,3] x [3,2]
    let mut h = Harness::new();
    let a = h.input("a", &[1, 3], vec![1.0, 2.0, 3.0]);
    let b = h.input("b", &[3, 2], vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let c = h.b.matmul(a, b).unwrap();
    assert_exact(&h.run(c), &[1, 2], &[14.0, 32.0]);
}

/// out[batch..., i, j] = Σ_p a[ba..., i, p] · b[bb..., p, j] with explicit
/// batch index maps.
fn naive_matmul(
    a: &[f32],
    da: &[usize],
    b: &[f32],
    db: &[usize],
    dout: &[usize],
    map_a: impl Fn(&[usize]) -> Vec<usize>,
    map_b: impl Fn(&[usize]) -> Vec<usize>,
) -> Vec<f32> {
    let k = da[da.len() - 1];
    let n: usize = dout.iter().product();
    (0..n)
        .map(|pos| {
            let idx = unflat(dout, pos);
            let r = idx.len();
            let (batch, i, j) = (&idx[..r - 2], idx[r - 2], idx[r - 1]);
            (0..k)
                .map(|p| {
                    let mut ia = map_a(batch);
                    ia.extend([i, p]);
                    let mut ib = map_b(batch);
                    ib.extend([p, j]);
                    a[flat(da, &ia)] * b[flat(db, &ib)]
                })
                .sum()
        })
        .collect()
}

#[test]
fn matmul_broadcasts_batch_dims() {
    // a [2,1,2,3] · b [3,3,2] -> [2,3,2,2]
    let (da, db, dout) = ([2, 1, 2, 3], [3, 3, 2], [2, 3, 2, 2]);
    let av = pseudo_random(12, 8);
    let bv = pseudo_random(18, 9);
    let mut h = Harness::new();
    let a = h.input("a", &da, av.clone());
    let b = h.input("b", &db, bv.clone());
    let c = h.b.matmul(a, b).unwrap();
    let expected = naive_matmul(
        &av,
        &da,
        &bv,
        &db,
        &dout,
        |bt| vec![bt[0], 0],
        |bt| vec![bt[1]],
    );
    assert_close(&h.run(c), &dout, &expected, 1e-5);
}

#[test]
fn matmul_broadcasts_2d_lhs_over_batched_rhs() {
    // a [2,3] · b [4,3,2] -> [4,2,2]
    let (da, db, dout) = ([2, 3], [4, 3, 2], [4, 2, 2]);
    let av = pseudo_random(6, 10);
    let bv = pseudo_random(24, 11);
    let mut h = Harness::new();
    let a = h.input("a", &da, av.clone());
    let b = h.input("b", &db, bv.clone());
    let c = h.b.matmul(a, b).unwrap();
    let expected = naive_matmul(&av, &da, &bv, &db, &dout, |_| vec![], |bt| vec![bt[0]]);
    assert_close(&h.run(c), &dout, &expected, 1e-5);
}

#[test]
fn matmul_same_batch_dims() {
    // a [2,2,3,4] · b [2,2,4,1] -> [2,2,3,1]
    let (da, db, dout) = ([2, 2, 3, 4], [2, 2, 4, 1], [2, 2, 3, 1]);
    let av = pseudo_random(48, 12);
    let bv = pseudo_random(16, 13);
    let mut h = Harness::new();
    let a = h.input("a", &da, av.clone());
    let b = h.input("b", &db, bv.clone());
    let c = h.b.matmul(a, b).unwrap();
    let expected = naive_matmul(
        &av,
        &da,
        &bv,
        &db,
        &dout,
        |bt| bt.to_vec(),
        |bt| bt.to_vec(),
    );
    assert_close(&h.run(c), &dout, &expected, 1e-5);
}

// ---------------------------------------------------------------------------
// Conv2d
// ---------------------------------------------------------------------------

/// NHWC `[n,h,w,c]` data to NCHW.
fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[flat(&[n, c, h, w], &[b, ch, y, xx])] =
                        x[flat(&[n, h, w, c], &[b, y, xx, ch])];
                }
            }
        }
    }
    out
}

/// NCHW `[n,c,h,w]` data to NHWC.
fn nchw_to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[flat(&[n, h, w, c], &[b, y, xx, ch])] =
                        x[flat(&[n, c, h, w], &[b, ch, y, xx])];
                }
            }
        }
    }
    out
}

struct ConvSpec {
    x_nchw: [usize; 4],
    w: [usize; 4],
    stride: [usize; 2],
    padding: [usize; 2],
    groups: usize,
    bias: bool,
}

/// Direct convolution in PyTorch's NCHW convention: for every output
/// position, sum over the input-channel slice of the group and the kernel
/// window, treating out-of-range (padding) positions as zero.
fn conv2d_nchw_reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvSpec,
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, wd] = s.x_nchw;
    let [cout, cin_g, kh, kw] = s.w;
    assert_eq!(cin_g * s.groups, cin);
    let ho = (h + 2 * s.padding[0] - kh) / s.stride[0] + 1;
    let wo = (wd + 2 * s.padding[1] - kw) / s.stride[1] + 1;
    let out_dims = [n, cout, ho, wo];
    let mut out = vec![0.0f32; n * cout * ho * wo];
    let cout_per_group = cout / s.groups;
    for b in 0..n {
        for oc in 0..cout {
            let group = oc / cout_per_group;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.map_or(0.0, |bv| bv[oc]);
                    for icg in 0..cin_g {
                        let ic = group * cin_g + icg;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let py = (oy * s.stride[0] + ky) as i64 - s.padding[0] as i64;
                                let px = (ox * s.stride[1] + kx) as i64 - s.padding[1] as i64;
                                let inside =
                                    (0..h as i64).contains(&py) && (0..wd as i64).contains(&px);
                                let xv = if inside {
                                    x[flat(&s.x_nchw, &[b, ic, py as usize, px as usize])]
                                } else {
                                    0.0
                                };
                                acc += xv * w[flat(&s.w, &[oc, icg, ky, kx])];
                            }
                        }
                    }
                    out[flat(&out_dims, &[b, oc, oy, ox])] = acc;
                }
            }
        }
    }
    (out, out_dims)
}

/// Runs the IR conv (NHWC) and compares with the NCHW reference.
fn check_conv(spec: ConvSpec, seed: u32) {
    let [n, cin, h, wd] = spec.x_nchw;
    let x_nhwc = pseudo_random(n * h * wd * cin, seed);
    let wv = pseudo_random(spec.w.iter().product(), seed + 1);
    let bv = pseudo_random(spec.w[0], seed + 2);

    let mut hs = Harness::new();
    let x = hs.input("x", &[n, h, wd, cin], x_nhwc.clone());
    let w = hs.weight("w", &spec.w, wv.clone());
    let mut operands = vec![x, w];
    if spec.bias {
        operands.push(hs.weight("b", &[spec.w[0]], bv.clone()));
    }
    let op = Op::Conv2d {
        stride: spec.stride,
        padding: spec.padding,
        groups: spec.groups,
    };
    let y = hs.b.op(op, &operands).unwrap();
    let out = hs.run(y);

    let x_nchw = nhwc_to_nchw(&x_nhwc, [n, h, wd, cin]);
    let bias = spec.bias.then_some(bv.as_slice());
    let (ref_nchw, [rn, rc, rh, rw]) = conv2d_nchw_reference(&x_nchw, &wv, bias, &spec);
    let expected = nchw_to_nhwc(&ref_nchw, [rn, rc, rh, rw]);
    assert_close(&out, &[rn, rh, rw, rc], &expected, 1e-5);
}

#[test]
fn conv2d_hand_values_valid_padding() {
    // 3x3 image 1..9, 2x2 kernel of ones, stride 1, no padding.
    let mut h = Harness::new();
    let x = h.input("x", &[1, 3, 3, 1], (1..=9).map(|v| v as f32).collect());
    let w = h.weight("w", &[1, 1, 2, 2], vec![1.0; 4]);
    let y = h.b.conv2d(x, w, None, 1, 0).unwrap();
    assert_exact(&h.run(y), &[1, 2, 2, 1], &[12.0, 16.0, 24.0, 28.0]);
}

#[test]
fn conv2d_hand_values_padding_and_stride() {
    // 3x3 image 1..9, 3x3 kernel of ones, stride 2, padding 1: each output is
    // the sum of the (clipped) 3x3 window around the corners.
    let mut h = Harness::new();
    let x = h.input("x", &[1, 3, 3, 1], (1..=9).map(|v| v as f32).collect());
    let w = h.weight("w", &[1, 1, 3, 3], vec![1.0; 9]);
    let b = h.weight("b", &[1], vec![100.0]);
    let y = h.b.conv2d(x, w, Some(b), 2, 1).unwrap();
    // corners: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9
    assert_exact(&h.run(y), &[1, 2, 2, 1], &[112.0, 116.0, 124.0, 128.0]);
}

#[test]
fn conv2d_stride2_pad1_matches_nchw_reference() {
    check_conv(
        ConvSpec {
            x_nchw: [2, 3, 5, 6],
            w: [4, 3, 3, 3],
            stride: [2, 2],
            padding: [1, 1],
            groups: 1,
            bias: true,
        },
        20,
    );
}

#[test]
fn conv2d_groups2_matches_nchw_reference() {
    check_conv(
        ConvSpec {
            x_nchw: [1, 4, 4, 4],
            w: [6, 2, 3, 3],
            stride: [1, 1],
            padding: [1, 1],
            groups: 2,
            bias: false,
        },
        30,
    );
}

#[test]
fn conv2d_groups2_stride2_pad1_with_bias_matches_nchw_reference() {
    check_conv(
        ConvSpec {
            x_nchw: [2, 4, 7, 5],
            w: [4, 2, 3, 3],
            stride: [2, 2],
            padding: [1, 1],
            groups: 2,
            bias: true,
        },
        40,
    );
}

#[test]
fn conv2d_asymmetric_stride_padding_and_kernel() {
    check_conv(
        ConvSpec {
            x_nchw: [1, 2, 6, 5],
            w: [3, 2, 3, 2],
            stride: [2, 1],
            padding: [1, 0],
            groups: 1,
            bias: true,
        },
        50,
    );
}

#[test]
fn conv2d_1x1_is_a_per_pixel_linear() {
    check_conv(
        ConvSpec {
            x_nchw: [1, 3, 2, 2],
            w: [5, 3, 1, 1],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            bias: true,
        },
        60,
    );
}

#[test]
fn im2col_hand_values_with_padding() {
    // 2x2 image of 2 channels, 3x3 kernel, padding 1: pixel (0, 0)'s patch
    // holds the image in its lower right 2x2 taps, zeros elsewhere.
    let mut h = Harness::new();
    let x = h.input("x", &[1, 2, 2, 2], iota(8));
    let y = h.b.im2col(x, [3, 3], [1, 1], [1, 1]).unwrap();
    let out = h.run(y);
    assert_eq!(out.shape, Shape::from(&[1, 2, 2, 18][..]));
    let first: Vec<f32> = out.data[..18].to_vec();
    #[rustfmt::skip]
    let expected = vec![
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // ky = 0: above the image
        0.0, 0.0, 0.0, 1.0, 2.0, 3.0, // ky = 1: pad, (0,0), (0,1)
        0.0, 0.0, 4.0, 5.0, 6.0, 7.0, // ky = 2: pad, (1,0), (1,1)
    ];
    assert_eq!(first, expected);
}

/// `conv2d(x, w, b)` against `linear(im2col(x), w')` with `w'` the weight
/// permuted to `[Cout, KH, KW, Cin]` and flattened: the column order of
/// `Im2col` is the one that permutation gives.
#[test]
fn im2col_then_linear_is_the_conv() {
    for (x_dims, w_dims, stride, padding) in [
        ([2, 5, 6, 3], [4, 3, 3, 3], [2, 2], [1, 1]),
        ([1, 6, 5, 2], [3, 2, 3, 2], [2, 1], [1, 0]),
        ([1, 4, 4, 8], [5, 8, 3, 3], [1, 1], [1, 1]),
    ] {
        let [n, h, wd, cin] = x_dims;
        let [cout, _, kh, kw] = w_dims;
        let xv = pseudo_random(n * h * wd * cin, 70);
        let wv = pseudo_random(w_dims.iter().product(), 71);
        let bv = pseudo_random(cout, 72);
        let mut permuted = Vec::with_capacity(wv.len());
        for o in 0..cout {
            for ky in 0..kh {
                for kx in 0..kw {
                    for c in 0..cin {
                        permuted.push(wv[flat(&w_dims, &[o, c, ky, kx])]);
                    }
                }
            }
        }
        let mut hs = Harness::new();
        let x = hs.input("x", &x_dims, xv);
        let w = hs.weight("w", &w_dims, wv);
        let w2 = hs.weight("w2", &[cout, kh * kw * cin], permuted);
        let b = hs.weight("b", &[cout], bv);
        let conv = Op::Conv2d {
            stride,
            padding,
            groups: 1,
        };
        let conv = hs.b.op(conv, &[x, w, b]).unwrap();
        let cols = hs.b.im2col(x, [kh, kw], stride, padding).unwrap();
        let mm = hs.b.linear(cols, w2, Some(b)).unwrap();
        let out = hs.run_all(&[conv, mm]);
        assert_eq!(out[0].shape, out[1].shape);
        let error = out[1].rel_l2(&out[0]);
        assert!(error < 1e-6, "{x_dims:?} {w_dims:?}: {error:e}");
    }
}

// ---------------------------------------------------------------------------
// Norms and softmax
// ---------------------------------------------------------------------------

#[test]
fn layer_norm_without_affine_hand_values() {
    // Row [1,2,3,4]: mean 2.5, variance 1.25 (biased).
    let eps = 1e-5f64;
    let inv = 1.0 / (1.25 + eps).sqrt();
    let mut h = Harness::new();
    let x = h.input("x", &[2, 4], vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]);
    let y = h.b.layer_norm(x, None, eps as f32).unwrap();
    let expected: Vec<f32> = [-1.5, -0.5, 0.5, 1.5]
        .iter()
        .map(|d| (d * inv) as f32)
        .chain([0.0; 4]) // constant row normalises to zero
        .collect();
    assert_close(&h.run(y), &[2, 4], &expected, 1e-6);
}

#[test]
fn layer_norm_with_affine_hand_values() {
    let mut h = Harness::new();
    let x = h.input("x", &[1, 4], vec![1.0, 2.0, 3.0, 4.0]);
    let w = h.weight("w", &[4], vec![1.0, 2.0, 0.5, -1.0]);
    let b = h.weight("b", &[4], vec![0.0, 1.0, 2.0, 3.0]);
    let y = h.b.layer_norm(x, Some((w, b)), 0.0).unwrap();
    let s = 1.25f32.sqrt();
    let expected = [-1.5 / s, 1.0 - 1.0 / s, 2.0 + 0.25 / s, 3.0 - 1.5 / s];
    assert_close(&h.run(y), &[1, 4], &expected, 1e-6);
}

#[test]
fn layer_norm_rows_have_zero_mean_unit_variance() {
    let (rows, c) = (3, 16);
    let mut h = Harness::new();
    let xv: Vec<f32> = pseudo_random(rows * c, 70)
        .iter()
        .map(|v| v * 7.0 + 3.0)
        .collect();
    let x = h.input("x", &[rows, c], xv);
    let y = h.b.layer_norm(x, None, 0.0).unwrap();
    let out = h.run(y);
    for row in out.data.chunks(c) {
        let mean: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-5, "var {var}");
    }
}

#[test]
fn layer_norm_eps_is_added_to_the_variance() {
    // Row [-1, 1]: variance 1; eps = 3 gives 1/sqrt(4) = 0.5.
    let mut h = Harness::new();
    let x = h.input("x", &[2], vec![-1.0, 1.0]);
    let y = h.b.layer_norm(x, None, 3.0).unwrap();
    assert_close(&h.run(y), &[2], &[-0.5, 0.5], 1e-7);
}

#[test]
fn rms_norm_without_weight_hand_values() {
    // Row [3, 4]: mean square 12.5. Row [1, -1]: mean square 1.
    let mut h = Harness::new();
    let x = h.input("x", &[2, 2], vec![3.0, 4.0, 1.0, -1.0]);
    let y = h.b.rms_norm(x, None, 0.0).unwrap();
    let r = 12.5f32.sqrt();
    assert_close(&h.run(y), &[2, 2], &[3.0 / r, 4.0 / r, 1.0, -1.0], 1e-6);
}

#[test]
fn rms_norm_with_weight_and_eps() {
    // Row [3, 4] with eps 7.5: 1/sqrt(12.5 + 7.5) = 1/sqrt(20).
    let mut h = Harness::new();
    let x = h.input("x", &[1, 1, 2], vec![3.0, 4.0]);
    let w = h.weight("w", &[2], vec![2.0, -0.5]);
    let y = h.b.rms_norm(x, Some(w), 7.5).unwrap();
    let r = 20f32.sqrt();
    assert_close(&h.run(y), &[1, 1, 2], &[6.0 / r, -2.0 / r], 1e-6);
}

#[test]
fn group_norm_nhwc_matches_naive_reference() {
    let (n, hh, ww, c, groups) = (2, 2, 3, 6, 3);
    let eps = 1e-6f32;
    let xv: Vec<f32> = pseudo_random(n * hh * ww * c, 80)
        .iter()
        .map(|v| v * 4.0 + 1.0)
        .collect();
    let wv = pseudo_random(c, 81);
    let bv = pseudo_random(c, 82);
    let mut h = Harness::new();
    let x = h.input("x", &[n, hh, ww, c], xv.clone());
    let w = h.weight("w", &[c], wv.clone());
    let b = h.weight("b", &[c], bv.clone());
    let y = h.b.group_norm(x, w, b, groups, eps).unwrap();

    // Reference: for each (image, group) gather every value of the group's
    // channels over all pixels, normalise with biased variance.
    let dims = [n, hh, ww, c];
    let cg = c / groups;
    let mut expected = vec![0f32; xv.len()];
    for img in 0..n {
        for g in 0..groups {
            let members: Vec<[usize; 4]> = (0..hh)
                .flat_map(|y| {
                    (0..ww).flat_map(move |x| (0..cg).map(move |k| [img, y, x, g * cg + k]))
                })
                .collect();
            let vals: Vec<f64> = members.iter().map(|i| xv[flat(&dims, i)] as f64).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
            for (i, v) in members.iter().zip(&vals) {
                let ch = i[3];
                let norm = (v - mean) / (var + eps as f64).sqrt();
                expected[flat(&dims, i)] = (norm * wv[ch] as f64 + bv[ch] as f64) as f32;
            }
        }
    }
    assert_close(&h.run(y), &dims, &expected, 1e-5);
}

#[test]
fn group_norm_hand_values_two_groups() {
    // One 1x2 image, 4 channels, 2 groups: group 0 = channels {0,1}, group 1 = {2,3}.
    // Pixel 0: [0, 2, 10, 10], pixel 1: [4, 6, 10, 30].
    // Group 0 values {0,2,4,6}: mean 3, var 5. Group 1 {10,10,10,30}: mean 15, var 75.
    let mut h = Harness::new();
    let x = h.input(
        "x",
        &[1, 1, 2, 4],
        vec![0.0, 2.0, 10.0, 10.0, 4.0, 6.0, 10.0, 30.0],
    );
    let w = h.weight("w", &[4], vec![1.0, 1.0, 1.0, 2.0]);
    let b = h.weight("b", &[4], vec![0.0, 0.0, 0.0, 1.0]);
    let y = h.b.group_norm(x, w, b, 2, 0.0).unwrap();
    let (s0, s1) = (5f32.sqrt(), 75f32.sqrt());
    let expected = [
        -3.0 / s0,
        -1.0 / s0,
        -5.0 / s1,
        2.0 * (-5.0 / s1) + 1.0,
        1.0 / s0,
        3.0 / s0,
        -5.0 / s1,
        2.0 * (15.0 / s1) + 1.0,
    ];
    assert_close(&h.run(y), &[1, 1, 2, 4], &expected, 1e-6);
}

#[test]
fn softmax_hand_values_and_rows_sum_to_one() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3], vec![0.0, 2f32.ln(), 3f32.ln(), 5.0, 5.0, 5.0]);
    let y = h.b.softmax(x).unwrap();
    let out = h.run(y);
    assert_close(
        &out,
        &[2, 3],
        &[
            1.0 / 6.0,
            2.0 / 6.0,
            3.0 / 6.0,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ],
        1e-6,
    );
    let xs = pseudo_random(5 * 7, 90)
        .iter()
        .map(|v| v * 10.0)
        .collect::<Vec<_>>();
    let mut h = Harness::new();
    let x = h.input("x", &[5, 7], xs);
    let y = h.b.softmax(x).unwrap();
    for row in h.run(y).data.chunks(7) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "row sums to {sum}");
        assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }
}

#[test]
fn softmax_is_stable_for_large_values() {
    let mut h = Harness::new();
    let x = h.input(
        "x",
        &[3, 3],
        vec![
            1000.0, 1001.0, 1002.0, // same as softmax([0,1,2])
            -1000.0, 0.0, -1000.0, // one-hot
            3.0e38, 3.0e38, 3.0e38, // near f32::MAX: uniform, not NaN
        ],
    );
    let y = h.b.softmax(x).unwrap();
    let e: Vec<f64> = (0..3).map(|i| (i as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    let expected = [
        (e[0] / s) as f32,
        (e[1] / s) as f32,
        (e[2] / s) as f32,
        0.0,
        1.0,
        0.0,
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
    ];
    let out = h.run(y);
    assert!(out.data.iter().all(|v| v.is_finite()));
    assert_close(&out, &[3, 3], &expected, 1e-6);
}

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

/// softmax(q_h · k_hᵀ · scale) · v_h for every batch and head, computed with
/// an explicit score matrix per head.
fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [b, sq, h, d]: [usize; 4],
    sk: usize,
    dv: usize,
    scale: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; b * sq * h * dv];
    for bi in 0..b {
        for hi in 0..h {
            // scores[i][j]
            let mut scores = vec![vec![0f64; sk]; sq];
            for (i, row) in scores.iter_mut().enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for e in 0..d {
                        acc += q[flat(&[b, sq, h, d], &[bi, i, hi, e])] as f64
                            * k[flat(&[b, sk, h, d], &[bi, j, hi, e])] as f64;
                    }
                    *s = acc * scale;
                }
            }
            for (i, row) in scores.iter().enumerate() {
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = row.iter().map(|s| (s - m).exp()).sum();
                for e in 0..dv {
                    let mut acc = 0f64;
                    for (j, s) in row.iter().enumerate() {
                        acc += (s - m).exp() / z * v[flat(&[b, sk, h, dv], &[bi, j, hi, e])] as f64;
                    }
                    out[flat(&[b, sq, h, dv], &[bi, i, hi, e])] = acc as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_per_head_reference_with_sq_ne_sk() {
    let (b, sq, sk, h, d, dv) = (2, 3, 5, 2, 4, 3);
    let qv: Vec<f32> = pseudo_random(b * sq * h * d, 100)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let kv: Vec<f32> = pseudo_random(b * sk * h * d, 101)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let vv = pseudo_random(b * sk * h * dv, 102);
    let mut hs = Harness::new();
    let q = hs.input("q", &[b, sq, h, d], qv.clone());
    let k = hs.input("k", &[b, sk, h, d], kv.clone());
    let v = hs.input("v", &[b, sk, h, dv], vv.clone());
    let o =
        hs.b.op(Op::Attention { scale: Scalar(0.3) }, &[q, k, v])
            .unwrap();
    let expected = attention_reference(&qv, &kv, &vv, [b, sq, h, d], sk, dv, 0.3f32 as f64);
    assert_close(&hs.run(o), &[b, sq, h, dv], &expected, 1e-5);
}

#[test]
fn attention_builder_uses_inverse_sqrt_head_dim_scale() {
    let (b, sq, sk, h, d) = (1, 4, 2, 3, 4);
    let qv = pseudo_random(b * sq * h * d, 110);
    let kv = pseudo_random(b * sk * h * d, 111);
    let vv = pseudo_random(b * sk * h * d, 112);
    let mut hs = Harness::new();
    let q = hs.input("q", &[b, sq, h, d], qv.clone());
    let k = hs.input("k", &[b, sk, h, d], kv.clone());
    let v = hs.input("v", &[b, sk, h, d], vv.clone());
    let o = hs.b.attention(q, k, v).unwrap();
    assert_eq!(
        hs.b.graph().node(o).op,
        Op::Attention { scale: Scalar(0.5) }
    );
    let expected = attention_reference(&qv, &kv, &vv, [b, sq, h, d], sk, d, 0.5);
    assert_close(&hs.run(o), &[b, sq, h, d], &expected, 1e-5);
}

#[test]
fn attention_with_zero_scale_averages_values() {
    // scale 0: uniform weights, every query gets the mean of v over Sk.
    let mut hs = Harness::new();
    let q = hs.input("q", &[1, 2, 1, 2], vec![5.0, -3.0, 1.0, 9.0]);
    let k = hs.input("k", &[1, 3, 1, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let v = hs.input("v", &[1, 3, 1, 1], vec![3.0, 6.0, 9.0]);
    let o =
        hs.b.op(Op::Attention { scale: Scalar(0.0) }, &[q, k, v])
            .unwrap();
    assert_close(&hs.run(o), &[1, 2, 1, 1], &[6.0, 6.0], 1e-6);
}

#[test]
fn attention_with_sharp_scores_selects_the_matching_key() {
    // Large scale: each query attends (almost) only to the key it aligns with.
    let mut hs = Harness::new();
    let q = hs.input("q", &[1, 2, 1, 2], vec![1.0, 0.0, 0.0, 1.0]);
    let k = hs.input("k", &[1, 2, 1, 2], vec![0.0, 1.0, 1.0, 0.0]);
    let v = hs.input("v", &[1, 2, 1, 2], vec![10.0, 20.0, 30.0, 40.0]);
    let o =
        hs.b.op(
            Op::Attention {
                scale: Scalar(100.0),
            },
            &[q, k, v],
        )
        .unwrap();
    // query 0 = e0 matches key 1 -> v[1]; query 1 = e1 matches key 0 -> v[0].
    assert_close(&hs.run(o), &[1, 2, 1, 2], &[30.0, 40.0, 10.0, 20.0], 1e-6);
}

// ---------------------------------------------------------------------------
// Rotary embeddings
// ---------------------------------------------------------------------------

#[test]
fn rope_table_layout_and_values() {
    let axes_dim = [2usize, 4, 6];
    let theta = 10_000.0f32;
    let ids = vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 7.0, 0.0, 40.0];
    let mut h = Harness::new();
    let ids_in = h.input("ids", &[3, 3], ids.clone());
    let table = h.b.rope_table(ids_in, &axes_dim, theta).unwrap();
    assert_eq!(h.b.ty(table).dtype, DType::F32);
    let out = h.run(table);
    let pairs = 6; // (2 + 4 + 6) / 2
    assert_eq!(out.shape, Shape::from([3, pairs, 2]));
    for s in 0..3 {
        let mut pair = 0;
        for (a, &dim) in axes_dim.iter().enumerate() {
            let pos = ids[s * 3 + a] as f64;
            for j in 0..dim / 2 {
                let angle = pos * (theta as f64).powf(-2.0 * j as f64 / dim as f64);
                let (c, sn) = (
                    out.data[(s * pairs + pair) * 2],
                    out.data[(s * pairs + pair) * 2 + 1],
                );
                assert!(
                    (c as f64 - angle.cos()).abs() < 1e-6,
                    "cos s={s} a={a} j={j}"
                );
                assert!(
                    (sn as f64 - angle.sin()).abs() < 1e-6,
                    "sin s={s} a={a} j={j}"
                );
                pair += 1;
            }
        }
    }
}

#[test]
fn rope_table_hand_entries() {
    // One position with ids (pos0, pos1) = (2, 3), axes_dim [2, 4], theta 100.
    // Pair 0: axis 0, j=0 -> angle 2·1 = 2.
    // Pair 1: axis 1, j=0 -> angle 3·1 = 3.
    // Pair 2: axis 1, j=1 -> angle 3·100^(-1/2) = 0.3.
    let mut h = Harness::new();
    let ids = h.input("ids", &[1, 2], vec![2.0, 3.0]);
    let table = h.b.rope_table(ids, &[2, 4], 100.0).unwrap();
    let expected: Vec<f32> = [2.0f64, 3.0, 0.3]
        .iter()
        .flat_map(|a| [a.cos() as f32, a.sin() as f32])
        .collect();
    assert_close(&h.run(table), &[1, 3, 2], &expected, 1e-6);
}

#[test]
fn rope_table_at_position_zero_is_identity_rotation() {
    let mut h = Harness::new();
    let ids = h.input("ids", &[2, 2], vec![0.0; 4]);
    let table = h.b.rope_table(ids, &[4, 4], 10_000.0).unwrap();
    let expected: Vec<f32> = (0..2 * 4).flat_map(|_| [1.0, 0.0]).collect();
    assert_exact(&h.run(table), &[2, 4, 2], &expected);
}

/// Builds ApplyRope with the table fed as an input `[S, D/2, 2]`.
fn run_apply_rope(x_dims: [usize; 4], xv: Vec<f32>, table: Vec<f32>) -> Tensor {
    let [_, s, _, d] = x_dims;
    let mut h = Harness::new();
    let x = h.input("x", &x_dims, xv);
    let t = h.input("table", &[s, d / 2, 2], table);
    let y = h.b.apply_rope(x, t).unwrap();
    h.run(y)
}

#[test]
fn apply_rope_rotates_interleaved_pairs() {
    let dims = [2, 3, 2, 4];
    let [b, s, hh, d] = dims;
    let xv = pseudo_random(b * s * hh * d, 120);
    let angles: Vec<f32> = pseudo_random(s * d / 2, 121)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let table: Vec<f32> = angles.iter().flat_map(|a| [a.cos(), a.sin()]).collect();
    let out = run_apply_rope(dims, xv.clone(), table.clone());
    let mut expected = vec![0f32; xv.len()];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..hh {
                for i in 0..d / 2 {
                    let c = table[flat(&[s, d / 2, 2], &[si, i, 0])];
                    let sn = table[flat(&[s, d / 2, 2], &[si, i, 1])];
                    let e = flat(&dims, &[bi, si, hi, 2 * i]);
                    let o = flat(&dims, &[bi, si, hi, 2 * i + 1]);
                    expected[e] = xv[e] * c - xv[o] * sn;
                    expected[o] = xv[o] * c + xv[e] * sn;
                }
            }
        }
    }
    assert_close(&out, &dims, &expected, 1e-6);
}

#[test]
fn apply_rope_quarter_turn_hand_values() {
    // One pair (1, 2) rotated by +90°: (x, y) -> (-y, x).
    let out = run_apply_rope([1, 1, 1, 2], vec![1.0, 2.0], vec![0.0, 1.0]);
    assert_exact(&out, &[1, 1, 1, 2], &[-2.0, 1.0]);
}

#[test]
fn apply_rope_with_zero_angle_is_identity() {
    let dims = [1, 2, 3, 6];
    let xv = pseudo_random(36, 130);
    let table: Vec<f32> = (0..2 * 3).flat_map(|_| [1.0, 0.0]).collect();
    let out = run_apply_rope(dims, xv.clone(), table);
    assert_exact(&out, &dims, &xv);
}

#[test]
fn apply_rope_preserves_pair_norms() {
    let dims = [1, 4, 2, 8];
    let xv = pseudo_random(64, 140);
    let table: Vec<f32> = pseudo_random(4 * 4, 141)
        .iter()
        .flat_map(|a| {
            let a = a * PI as f32;
            [a.cos(), a.sin()]
        })
        .collect();
    let out = run_apply_rope(dims, xv.clone(), table);
    for (xin, xout) in xv.chunks(2).zip(out.data.chunks(2)) {
        let n_in = xin[0].hypot(xin[1]);
        let n_out = xout[0].hypot(xout[1]);
        assert!((n_in - n_out).abs() < 1e-6, "{n_in} vs {n_out}");
    }
}

#[test]
fn rope_table_then_apply_rope_at_position_zero_is_identity() {
    let mut h = Harness::new();
    let xv = pseudo_random(8, 150);
    let x = h.input("x", &[1, 2, 1, 4], xv.clone());
    let ids = h.input("ids", &[2, 2], vec![0.0; 4]);
    let table = h.b.rope_table(ids, &[2, 2], 10_000.0).unwrap();
    let y = h.b.apply_rope(x, table).unwrap();
    assert_exact(&h.run(y), &[1, 2, 1, 4], &xv);
}

// ---------------------------------------------------------------------------
// Timestep embedding
// ---------------------------------------------------------------------------

/// diffusers' `get_timestep_embedding`, written out in f64:
/// exponent_i = -ln(max_period)·i / (half - shift); emb = scale·t·e^exponent;
/// `[sin, cos]`, swapped to `[cos, sin]` when `flip_sin_to_cos`.
fn timestep_reference(ts: &[f32], p: &TimestepParams) -> Vec<f32> {
    let half = p.dim / 2;
    let mut out = Vec::new();
    for &t in ts {
        let args: Vec<f64> = (0..half)
            .map(|i| {
                let exponent = -(p.max_period.get() as f64).ln() * i as f64
                    / (half as f64 - p.downscale_freq_shift.get() as f64);
                p.scale.get() as f64 * t as f64 * exponent.exp()
            })
            .collect();
        let sin: Vec<f32> = args.iter().map(|a| a.sin() as f32).collect();
        let cos: Vec<f32> = args.iter().map(|a| a.cos() as f32).collect();
        let (first, second) = if p.flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        out.extend(first);
        out.extend(second);
    }
    out
}

fn run_timestep(ts: &[f32], p: TimestepParams) -> Tensor {
    let mut h = Harness::new();
    let t = h.input("t", &[ts.len()], ts.to_vec());
    let e = h.b.timestep_embedding(t, p).unwrap();
    assert_eq!(h.b.ty(e).dtype, DType::F32);
    h.run(e)
}

fn flux_timestep_params(flip: bool) -> TimestepParams {
    TimestepParams {
        dim: 8,
        flip_sin_to_cos: flip,
        downscale_freq_shift: Scalar(0.0),
        scale: Scalar(1.0),
        max_period: Scalar(10_000.0),
    }
}

#[test]
fn timestep_embedding_flip_sin_to_cos_matches_diffusers() {
    let p = flux_timestep_params(true);
    let ts = [0.0, 250.0];
    let out = run_timestep(&ts, p);
    // t = 0: cos = 1, sin = 0, exactly.
    assert_eq!(&out.data[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_close(&out, &[2, 8], &timestep_reference(&ts, &p), 1e-4);
}

#[test]
fn timestep_embedding_without_flip_matches_diffusers() {
    let p = flux_timestep_params(false);
    let ts = [0.0, 250.0];
    let out = run_timestep(&ts, p);
    assert_eq!(&out.data[..8], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert_close(&out, &[2, 8], &timestep_reference(&ts, &p), 1e-4);
}

#[test]
fn timestep_embedding_hand_values_first_frequency() {
    // Frequency 0 is always 1, so the first angle is t itself:
    // flip=false puts sin(t) at column 0 and cos(t) at column dim/2.
    let out = run_timestep(&[250.0], flux_timestep_params(false));
    assert!((out.data[0] - 250f32.sin()).abs() < 1e-5);
    assert!((out.data[4] - 250f32.cos()).abs() < 1e-5);
    // Frequency 1 with dim 8 is 10000^(-1/4) = 0.1, so the angle is 25.
    assert!((out.data[1] - 25f32.sin()).abs() < 1e-5);
    assert!((out.data[5] - 25f32.cos()).abs() < 1e-5);
    // Frequency 3 is 10000^(-3/4) = 0.001: angle 0.25.
    assert!((out.data[3] - 0.25f32.sin()).abs() < 1e-6);
}

#[test]
fn timestep_embedding_shift_scale_and_max_period() {
    let p = TimestepParams {
        dim: 6,
        flip_sin_to_cos: false,
        downscale_freq_shift: Scalar(1.0),
        scale: Scalar(2.0),
        max_period: Scalar(100.0),
    };
    let ts = [0.5, 3.0, 17.0];
    let out = run_timestep(&ts, p);
    assert_close(&out, &[3, 6], &timestep_reference(&ts, &p), 1e-5);
    // half = 3, shift 1: exponents 0, -ln100/2, -ln100 -> freqs 1, 0.1, 0.01.
    assert!((out.data[1] - (2.0f32 * 0.5 * 0.1).sin()).abs() < 1e-6);
}

// ---------------------------------------------------------------------------
// Movement ops
// ---------------------------------------------------------------------------

#[test]
fn reshape_keeps_elements_in_order() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3, 2], iota(12));
    let y = h.b.reshape(x, [4, 3]).unwrap();
    let z = h.b.reshape(y, [12]).unwrap();
    let w = h.b.reshape(z, [1, 12, 1]).unwrap();
    assert_exact(&h.run(w), &[1, 12, 1], &iota(12));
}

/// out[idx] = x[j] where input index j has j[perm[i]] = idx[i].
fn permute_reference(x: &[f32], dims: &[usize], perm: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let data = (0..x.len())
        .map(|pos| {
            let oi = unflat(&out_dims, pos);
            let mut ii = vec![0; dims.len()];
            for (i, &p) in perm.iter().enumerate() {
                ii[p] = oi[i];
            }
            x[flat(dims, &ii)]
        })
        .collect();
    (data, out_dims)
}

fn check_permute(dims: &[usize], perm: &[usize]) {
    let n: usize = dims.iter().product();
    let xv = iota(n);
    let mut h = Harness::new();
    let x = h.input("x", dims, xv.clone());
    let y = h.b.permute(x, perm).unwrap();
    let (expected, out_dims) = permute_reference(&xv, dims, perm);
    assert_exact(&h.run(y), &out_dims, &expected);
}

#[test]
fn permute_2d_transpose_hand_values() {
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3], iota(6));
    let y = h.b.permute(x, &[1, 0]).unwrap();
    assert_exact(&h.run(y), &[3, 2], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn permute_3d() {
    // out[i,j,k] = x[j,k,i] for perm [2,0,1].
    let mut h = Harness::new();
    let x = h.input("x", &[2, 3, 4], iota(24));
    let y = h.b.permute(x, &[2, 0, 1]).unwrap();
    let mut expected = Vec::new();
    for i in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                expected.push((j * 12 + k * 4 + i) as f32);
            }
        }
    }
    assert_exact(&h.run(y), &[4, 2, 3], &expected);
    check_permute(&[2, 3, 4], &[1, 0, 2]);
    check_permute(&[2, 3, 4], &[0, 2, 1]);
    check_permute(&[2, 3, 4], &[0, 1, 2]);
}

#[test]
fn permute_4d() {
    // The attention head transpose [B,S,H,D] -> [B,H,S,D], and a full shuffle.
    check_permute(&[2, 3, 4, 5], &[0, 2, 1, 3]);
    check_permute(&[2, 3, 4, 5], &[3, 1, 0, 2]);
    check_permute(&[2, 1, 3, 2], &[3, 2, 1, 0]);
}

#[test]
fn permute_then_inverse_is_identity() {
    let mut h = Harness::new();
    let xv = iota(120);
    let x = h.input("x", &[2, 3, 4, 5], xv.clone());
    let y = h.b.permute(x, &[3, 1, 0, 2]).unwrap();
    // inverse of [3,1,0,2] is [2,1,3,0]
    let z = h.b.permute(y, &[2, 1, 3, 0]).unwrap();
    assert_exact(&h.run(z), &[2, 3, 4, 5], &xv);
}

#[test]
fn slice_along_each_axis() {
    let x = iota(24); // [2,3,4]
    let run_slice = |axis, start, end| {
        let mut h = Harness::new();
        let xi = h.input("x", &[2, 3, 4], x.clone());
        let y = h.b.slice(xi, axis, start, end).unwrap();
        h.run(y)
    };
    assert_exact(&run_slice(0, 1, 2), &[1, 3, 4], &iota(24)[12..]);
    assert_exact(
        &run_slice(1, 1, 3),
        &[2, 2, 4],
        &[
            4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, //
            16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0,
        ],
    );
    assert_exact(
        &run_slice(2, 1, 3),
        &[2, 3, 2],
        &[
            1.0, 2.0, 5.0, 6.0, 9.0, 10.0, 13.0, 14.0, 17.0, 18.0, 21.0, 22.0,
        ],
    );
    assert_exact(&run_slice(2, 0, 4), &[2, 3, 4], &x);
}

#[test]
fn split_pieces_concat_back_to_the_input() {
    let mut h = Harness::new();
    let xv = iota(2 * 7 * 3);
    let x = h.input("x", &[2, 7, 3], xv.clone());
    let parts = h.b.split(x, 1, &[2, 4, 1]).unwrap();
    let y = h.b.concat(&parts, 1).unwrap();
    assert_exact(&h.run(y), &[2, 7, 3], &xv);
}

#[test]
fn concat_three_operands_on_middle_axis() {
    let mut h = Harness::new();
    let a = h.input("a", &[2, 1, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let bv: Vec<f32> = (0..12).map(|v| 10.0 + v as f32).collect();
    let b = h.input("b", &[2, 2, 3], bv);
    let cv: Vec<f32> = (0..18).map(|v| 100.0 + v as f32).collect();
    let c = h.input("c", &[2, 3, 3], cv);
    let y = h.b.concat(&[a, b, c], 1).unwrap();
    let expected: Vec<f32> = [
        // batch 0: a row 0, b rows 0-1, c rows 0-2
        vec![1.0, 2.0, 3.0],
        (0..6).map(|v| 10.0 + v as f32).collect(),
        (0..9).map(|v| 100.0 + v as f32).collect(),
        // batch 1
        vec![4.0, 5.0, 6.0],
        (6..12).map(|v| 10.0 + v as f32).collect(),
        (9..18).map(|v| 100.0 + v as f32).collect(),
    ]
    .concat();
    assert_exact(&h.run(y), &[2, 6, 3], &expected);
}

#[test]
fn concat_first_and_last_axis() {
    let mut h = Harness::new();
    let a = h.input("a", &[1, 2], vec![1.0, 2.0]);
    let b = h.input("b", &[2, 2], vec![3.0, 4.0, 5.0, 6.0]);
    let y = h.b.concat(&[a, b], 0).unwrap();
    assert_exact(&h.run(y), &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    let mut h = Harness::new();
    let a = h.input("a", &[2, 1], vec![1.0, 2.0]);
    let b = h.input("b", &[2, 2], vec![3.0, 4.0, 5.0, 6.0]);
    let c = h.input("c", &[2, 1], vec![7.0, 8.0]);
    let y = h.b.concat(&[a, b, c], 1).unwrap();
    assert_exact(
        &h.run(y),
        &[2, 4],
        &[1.0, 3.0, 4.0, 7.0, 2.0, 5.0, 6.0, 8.0],
    );
}

#[test]
fn upsample_nearest_hand_values() {
    // [1,2,2,1] x2: each pixel becomes a 2x2 block.
    let mut h = Harness::new();
    let x = h.input("x", &[1, 2, 2, 1], vec![1.0, 2.0, 3.0, 4.0]);
    let y = h.b.upsample_nearest(x, 2).unwrap();
    assert_exact(
        &h.run(y),
        &[1, 4, 4, 1],
        &[
            1.0, 1.0, 2.0, 2.0, //
            1.0, 1.0, 2.0, 2.0, //
            3.0, 3.0, 4.0, 4.0, //
            3.0, 3.0, 4.0, 4.0,
        ],
    );
}

#[test]
fn upsample_nearest_multichannel_matches_index_formula() {
    let (n, hh, ww, c, s) = (2, 2, 3, 2, 3);
    let xv = iota(n * hh * ww * c);
    let mut h = Harness::new();
    let x = h.input("x", &[n, hh, ww, c], xv.clone());
    let y = h.b.upsample_nearest(x, s).unwrap();
    let out_dims = [n, hh * s, ww * s, c];
    let expected: Vec<f32> = (0..xv.len() * s * s)
        .map(|p| {
            let [b, oy, ox, ch] = unflat(&out_dims, p)[..] else {
                unreachable!()
            };
            xv[flat(&[n, hh, ww, c], &[b, oy / s, ox / s, ch])]
        })
        .collect();
    assert_exact(&h.run(y), &out_dims, &expected);
}

// ---------------------------------------------------------------------------
// Whole-graph behaviour of `interp::run`
// ---------------------------------------------------------------------------

#[test]
fn values_used_twice_and_by_several_outputs_stay_alive() {
    // y = x*x, z = y + x, w = silu(y): x and y each have several users.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    let y = b.mul(x, x).unwrap();
    let z = b.add(y, x).unwrap();
    let w = b.silu(y).unwrap();
    b.output("y", y).unwrap();
    b.output("z", z).unwrap();
    b.output("w", w).unwrap();
    let g = b.finish().unwrap();
    let feeds = HashMap::from([(
        "x".to_string(),
        Tensor::new([3], vec![1.0, -2.0, 3.0]).unwrap(),
    )]);
    let outs = interp::run(&g, &feeds).unwrap();
    assert_eq!(outs.keys().collect::<Vec<_>>(), ["w", "y", "z"]);
    assert_exact(&outs["y"], &[3], &[1.0, 4.0, 9.0]);
    assert_exact(&outs["z"], &[3], &[2.0, 2.0, 12.0]);
    let silu = |v: f64| (v / (1.0 + (-v).exp())) as f32;
    assert_close(&outs["w"], &[3], &[silu(1.0), silu(4.0), silu(9.0)], 1e-6);
}

#[test]
fn an_input_can_be_an_output() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    b.output("same", x).unwrap();
    let g = b.finish().unwrap();
    let feeds = HashMap::from([("x".to_string(), Tensor::new([2], vec![7.0, 8.0]).unwrap())]);
    assert_exact(&interp::run(&g, &feeds).unwrap()["same"], &[2], &[7.0, 8.0]);
}

#[test]
fn missing_input_is_reported_by_name() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let w = b.weight("proj.weight", DType::F32, [3, 2]).unwrap();
    let y = b.linear(x, w, None).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let feeds = HashMap::from([("x".to_string(), Tensor::full([2], 1.0))]);
    let err = interp::run(&g, &feeds).unwrap_err();
    assert_eq!(err, InterpError::MissingInput("proj.weight".into()));
    assert_eq!(
        err.to_string(),
        "no value supplied for graph input `proj.weight`"
    );
}

#[test]
fn input_with_wrong_shape_is_rejected_even_with_equal_numel() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3, 2]).unwrap();
    let y = b.silu(x).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let feeds = HashMap::from([("x".to_string(), Tensor::full([2, 3], 1.0))]);
    let err = interp::run(&g, &feeds).unwrap_err();
    assert_eq!(
        err,
        InterpError::InputShape {
            name: "x".into(),
            expected: Shape::from([3, 2]),
            found: Shape::from([2, 3]),
        }
    );
    assert_eq!(
        err.to_string(),
        "graph input `x` expects shape [3,2], got [2,3]"
    );
}

#[test]
fn extra_inputs_are_ignored() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [1]).unwrap();
    let y = b.unary(UnaryOp::Neg, x).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let feeds = HashMap::from([
        ("x".to_string(), Tensor::full([1], 2.0)),
        ("unused".to_string(), Tensor::full([5], 0.0)),
    ]);
    assert_exact(&interp::run(&g, &feeds).unwrap()["y"], &[1], &[-2.0]);
}

// ---------------------------------------------------------------------------
// Tensor
// ---------------------------------------------------------------------------

#[test]
fn tensor_new_checks_element_count() {
    let err = Tensor::new([2, 3], vec![0.0; 5]).unwrap_err();
    assert_eq!(
        err,
        InterpError::ElementCount {
            shape: Shape::from([2, 3]),
            len: 5
        }
    );
    assert_eq!(err.to_string(), "shape [2,3] needs 6 elements, got 5");
    let t = Tensor::new([2, 3], vec![0.0; 6]).unwrap();
    assert_eq!(t, Tensor::full([2, 3], 0.0));
}

#[test]
fn rel_l2_of_identical_tensors_is_zero() {
    let a = Tensor::new([3], vec![1.0, -2.0, 3.0]).unwrap();
    assert_eq!(a.rel_l2(&a), 0.0);
    let zero = Tensor::full([3], 0.0);
    assert_eq!(zero.rel_l2(&zero), 0.0);
}

#[test]
fn rel_l2_known_values() {
    let reference = Tensor::new([2], vec![3.0, 4.0]).unwrap(); // norm 5
    let doubled = Tensor::new([2], vec![6.0, 8.0]).unwrap(); // diff norm 5
    assert_eq!(doubled.rel_l2(&reference), 1.0);
    let partial = Tensor::new([2], vec![3.0, 0.0]).unwrap(); // diff norm 4
    assert!((partial.rel_l2(&reference) - 0.8).abs() < 1e-12);
    // Not symmetric: relative to the second argument.
    assert!((reference.rel_l2(&partial) - 4.0 / 3.0).abs() < 1e-12);
    let off = Tensor::new([2], vec![3.3, 4.4]).unwrap(); // diff (0.3, 0.4)
    assert!((off.rel_l2(&reference) - 0.1).abs() < 1e-6);
}

#[test]
fn rel_l2_is_infinite_for_nan_shape_mismatch_and_zero_reference() {
    let reference = Tensor::new([2], vec![3.0, 4.0]).unwrap();
    let nan = Tensor::new([2], vec![f32::NAN, 4.0]).unwrap();
    assert_eq!(nan.rel_l2(&reference), f64::INFINITY);
    assert_eq!(reference.rel_l2(&nan), f64::INFINITY);
    let reshaped = Tensor::new([1, 2], vec![3.0, 4.0]).unwrap();
    assert_eq!(reshaped.rel_l2(&reference), f64::INFINITY);
    let zero = Tensor::full([2], 0.0);
    assert_eq!(reference.rel_l2(&zero), f64::INFINITY);
}
