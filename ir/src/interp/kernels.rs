//! Reference implementations of each op, written for clarity over speed.
//!
//! Shapes were checked by type inference before a node exists, so these
//! functions index without re-validating. Dot products and reductions
//! accumulate in f64.
//!
//! The fp8 ops follow torchao's float8 dynamic quantization: a scale is
//! `amax / max_finite`, quantized values are `round(x · (1 / scale))`, the
//! reciprocal rounded to f32 first (kept as f32 here, but exactly
//! representable in the fp8 dtype), and a scaled linear
//! multiplies the exact dot product of the quantized operands by both scales.
//! A scaled attention dequantizes its operands and then rounds what the fp8
//! kernel rounds: the probabilities (to e4m3, relative to the row max, with
//! a 2⁸ headroom factor) and its bf16 output.

use crate::{BinaryOp, DType, Op, Shape, TimestepParams, UnaryOp};

use super::Tensor;

/// Evaluates `op` on `args`; `out_shape` is the inferred output shape.
pub(super) fn eval(op: &Op, args: &[&Tensor], out_shape: &Shape) -> Tensor {
    let data = match op {
        Op::Input { .. } => unreachable!("inputs are fed, not evaluated"),
        Op::Unary(u) => args[0].data.iter().map(|&x| unary(*u, x)).collect(),
        Op::Binary(b) => broadcast_binary(*b, args[0], args[1], out_shape),
        Op::BinaryScalar { op, scalar } => args[0]
            .data
            .iter()
            .map(|&x| binary(*op, x, scalar.get()))
            .collect(),
        Op::Cast(dtype) => args[0].data.iter().map(|&x| dtype.round(x)).collect(),
        Op::Linear => linear(args),
        Op::MatMul => matmul(args[0], args[1], out_shape),
        Op::Conv2d {
            stride,
            padding,
            groups,
        } => conv2d(args, *stride, *padding, *groups, out_shape),
        Op::LayerNorm { eps } => layer_norm(args, eps.get()),
        Op::RmsNorm { eps } => rms_norm(args, eps.get()),
        Op::GroupNorm { groups, eps } => group_norm(args, *groups, eps.get()),
        Op::Softmax => softmax(args[0]),
        Op::Attention { scale } => attention(args[0], args[1], args[2], scale.get()),
        Op::RopeTable { axes_dim, theta } => rope_table(args[0], axes_dim, theta.get()),
        Op::ApplyRope => apply_rope(args[0], args[1]),
        Op::TimestepEmbedding(p) => timestep_embedding(args[0], p),
        Op::Reshape(_) => args[0].data.clone(),
        Op::Permute(perm) => permute(args[0], perm),
        Op::Slice { axis, start, end } => slice(args[0], *axis, *start, *end),
        Op::Concat { axis } => concat(args, *axis),
        Op::UpsampleNearest { scale } => upsample_nearest(args[0], *scale),
        Op::Im2col {
            kernel,
            stride,
            padding,
        } => im2col(args[0], *kernel, *stride, *padding, out_shape),
        Op::DynamicScale { dtype, per_row } => dynamic_scale(args[0], *dtype, *per_row),
        Op::Quantize(dtype) => quantize(args[0], args[1], *dtype),
        Op::ScaledLinear { .. } => scaled_linear(args),
        Op::ScaledAttention { scale } => scaled_attention(args, scale.get()),
    };
    debug_assert_eq!(data.len(), out_shape.numel(), "{op}");
    Tensor {
        shape: out_shape.clone(),
        data,
    }
}

fn unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Square => x * x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::GeluTanh => {
            let x = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            (0.5 * x * (1.0 + inner.tanh())) as f32
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

fn binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

/// Strides of `shape` aligned to the right of an output of rank `rank`, with
/// 0 for broadcast (missing or size-1) dimensions.
fn broadcast_strides(shape: &Shape, out: &Shape) -> Vec<usize> {
    let rank = out.rank();
    let own = shape.strides();
    let offset = rank - shape.rank();
    (0..rank)
        .map(|i| {
            if i < offset || shape.dims()[i - offset] == 1 && out.dims()[i] != 1 {
                0
            } else {
                own[i - offset]
            }
        })
        .collect()
}

fn broadcast_binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &Shape) -> Vec<f32> {
    if a.shape == b.shape {
        return a
            .data
            .iter()
            .zip(&b.data)
            .map(|(&x, &y)| binary(op, x, y))
            .collect();
    }
    let sa = broadcast_strides(&a.shape, out);
    let sb = broadcast_strides(&b.shape, out);
    let dims = out.dims();
    let mut index = vec![0usize; dims.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut data = Vec::with_capacity(out.numel());
    for _ in 0..out.numel() {
        data.push(binary(op, a.data[ia], b.data[ib]));
        // Odometer increment, updating both offsets incrementally.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if index[d] < dims[d] {
                break;
            }
            ia -= sa[d] * dims[d];
            ib -= sb[d] * dims[d];
            index[d] = 0;
        }
    }
    data
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn linear(args: &[&Tensor]) -> Vec<f32> {
    let (x, w) = (args[0], args[1]);
    let k = w.shape.dims()[1];
    let n = w.shape.dims()[0];
    let rows = x.data.len() / k;
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let xr = &x.data[r * k..(r + 1) * k];
        for j in 0..n {
            let mut acc = dot(xr, &w.data[j * k..(j + 1) * k]);
            if let Some(b) = args.get(2) {
                acc += b.data[j] as f64;
            }
            out.push(acc as f32);
        }
    }
    out
}

use crate::op::MIN_AMAX;

/// `max(amax, 1e-12) / max_finite(dtype)` over the whole tensor or per row of
/// the last axis. A NaN anywhere in the reduced elements gives a NaN scale.
fn dynamic_scale(x: &Tensor, dtype: DType, per_row: bool) -> Vec<f32> {
    // Type inference only admits fp8 dtypes, which are finite-bounded.
    let max = dtype.max_finite().unwrap_or(f32::MAX);
    let row = if per_row {
        x.shape.last().unwrap_or(1)
    } else {
        x.data.len()
    };
    x.data
        .chunks(row)
        .map(|values| {
            let amax = abs_max(values);
            if amax.is_nan() {
                amax
            } else {
                amax.max(MIN_AMAX) / max
            }
        })
        .collect()
}

/// `max |v|`, NaN when any value is NaN (`f32::max` would skip it).
fn abs_max(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |acc, &v| {
        if acc.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            acc.max(v.abs())
        }
    })
}

/// The index into a scale of `scale_len` elements for row `r`: a per-tensor
/// scale (one element) serves every row.
fn scale_index(scale_len: usize, r: usize) -> usize {
    if scale_len == 1 {
        0
    } else {
        r
    }
}

/// `dtype.round(x · (1 / scale))` with a per-tensor or per-row scale, the
/// reciprocal rounded to f32 once per scale (as `Op::Quantize` defines it).
fn quantize(x: &Tensor, scale: &Tensor, dtype: DType) -> Vec<f32> {
    let row = x.shape.last().unwrap_or(1);
    let mut out = Vec::with_capacity(x.data.len());
    for (r, values) in x.data.chunks(row).enumerate() {
        let inv = 1.0 / scale.data[scale_index(scale.data.len(), r)];
        out.extend(values.iter().map(|&v| dtype.round(v * inv)));
    }
    out
}

/// `(xq · wqᵀ)[r, n] · xs[r] · ws[n] (+ b[n])`: the dot product of the
/// quantized values accumulates in f64, the scales apply after it.
fn scaled_linear(args: &[&Tensor]) -> Vec<f32> {
    let (xq, xs, wq, ws) = (args[0], args[1], args[2], args[3]);
    let k = wq.shape.dims()[1];
    let n = wq.shape.dims()[0];
    let rows = xq.data.len() / k;
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let xr = &xq.data[r * k..(r + 1) * k];
        let x_scale = xs.data[scale_index(xs.data.len(), r)] as f64;
        for j in 0..n {
            let w_scale = ws.data[scale_index(ws.data.len(), j)] as f64;
            let mut acc = dot(xr, &wq.data[j * k..(j + 1) * k]) * x_scale * w_scale;
            if let Some(b) = args.get(4) {
                acc += b.data[j] as f64;
            }
            out.push(acc as f32);
        }
    }
    out
}

fn matmul(a: &Tensor, b: &Tensor, out: &Shape) -> Vec<f32> {
    let (ra, rb, ro) = (a.shape.rank(), b.shape.rank(), out.rank());
    let (m, k) = (a.shape.dims()[ra - 2], a.shape.dims()[ra - 1]);
    let n = b.shape.dims()[rb - 1];
    let batch_out = Shape::from(&out.dims()[..ro - 2]);
    let batch_a = Shape::from(&a.shape.dims()[..ra - 2]);
    let batch_b = Shape::from(&b.shape.dims()[..rb - 2]);
    let sa = broadcast_strides(&batch_a, &batch_out);
    let sb = broadcast_strides(&batch_b, &batch_out);
    let batch_strides = batch_out.strides();
    let mut data = vec![0f32; out.numel()];
    for bi in 0..batch_out.numel() {
        let (mut oa, mut ob) = (0, 0);
        for d in 0..batch_out.rank() {
            let i = (bi / batch_strides[d]) % batch_out.dims()[d];
            oa += i * sa[d];
            ob += i * sb[d];
        }
        let a_mat = &a.data[oa * m * k..(oa + 1) * m * k];
        let b_mat = &b.data[ob * k * n..(ob + 1) * k * n];
        for i in 0..m {
            for j in 0..n {
                let acc: f64 = (0..k)
                    .map(|p| a_mat[i * k + p] as f64 * b_mat[p * n + j] as f64)
                    .sum();
                data[bi * m * n + i * n + j] = acc as f32;
            }
        }
    }
    data
}

fn conv2d(
    args: &[&Tensor],
    stride: [usize; 2],
    padding: [usize; 2],
    groups: usize,
    out: &Shape,
) -> Vec<f32> {
    let (x, w) = (args[0], args[1]);
    let [n, h, wd, cin] = [
        x.shape.dims()[0],
        x.shape.dims()[1],
        x.shape.dims()[2],
        x.shape.dims()[3],
    ];
    let [cout, cin_g, kh, kw] = [
        w.shape.dims()[0],
        w.shape.dims()[1],
        w.shape.dims()[2],
        w.shape.dims()[3],
    ];
    let (ho, wo) = (out.dims()[1], out.dims()[2]);
    let cout_g = cout / groups;
    let mut data = vec![0f32; out.numel()];
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for co in 0..cout {
                    let g = co / cout_g;
                    let mut acc = args.get(2).map_or(0.0, |bias| bias.data[co] as f64);
                    for ky in 0..kh {
                        let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            let xbase =
                                ((b * h + iy as usize) * wd + ix as usize) * cin + g * cin_g;
                            for ci in 0..cin_g {
                                let wv = w.data[((co * cin_g + ci) * kh + ky) * kw + kx];
                                acc += x.data[xbase + ci] as f64 * wv as f64;
                            }
                        }
                    }
                    data[((b * ho + oy) * wo + ox) * cout + co] = acc as f32;
                }
            }
        }
    }
    data
}

fn layer_norm(args: &[&Tensor], eps: f32) -> Vec<f32> {
    let x = args[0];
    let c = x.shape.last().unwrap();
    let mut out = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let mut y = (v as f64 - mean) * inv;
            if args.len() == 3 {
                y = y * args[1].data[j] as f64 + args[2].data[j] as f64;
            }
            out.push(y as f32);
        }
    }
    out
}

fn rms_norm(args: &[&Tensor], eps: f32) -> Vec<f32> {
    let x = args[0];
    let c = x.shape.last().unwrap();
    let mut out = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(c) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let w = args.get(1).map_or(1.0, |w| w.data[j] as f64);
            out.push((v as f64 * inv * w) as f32);
        }
    }
    out
}

fn group_norm(args: &[&Tensor], groups: usize, eps: f32) -> Vec<f32> {
    let (x, w, b) = (args[0], args[1], args[2]);
    let d = x.shape.dims();
    let (n, hw, c) = (d[0], d[1] * d[2], d[3]);
    let cg = c / groups;
    let mut out = vec![0f32; x.data.len()];
    for bi in 0..n {
        let img = &x.data[bi * hw * c..(bi + 1) * hw * c];
        for g in 0..groups {
            let values = || {
                (0..hw).flat_map(move |p| (0..cg).map(move |ci| img[p * c + g * cg + ci] as f64))
            };
            let count = (hw * cg) as f64;
            let mean = values().sum::<f64>() / count;
            let var = values().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for p in 0..hw {
                for ci in 0..cg {
                    let ch = g * cg + ci;
                    let i = p * c + ch;
                    let y = (img[i] as f64 - mean) * inv * w.data[ch] as f64 + b.data[ch] as f64;
                    out[bi * hw * c + i] = y as f32;
                }
            }
        }
    }
    out
}

fn softmax_row(row: &[f32], out: &mut Vec<f32>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    out.extend(exps.iter().map(|e| (e / sum) as f32));
}

fn softmax(x: &Tensor) -> Vec<f32> {
    let c = x.shape.last().unwrap();
    let mut out = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(c) {
        softmax_row(row, &mut out);
    }
    out
}

/// The scores of query row `i` of batch `bi`, head `hi` against every key,
/// `q·k · scale` accumulated in f64 and rounded to f32, into `scores`.
fn row_scores(q: &Tensor, k: &Tensor, scale: f32, [bi, hi, i]: [usize; 3], scores: &mut Vec<f32>) {
    let [_, sq, h, d] = dims4(&q.shape);
    let sk = k.shape.dims()[1];
    let qrow = &q.data[((bi * sq + i) * h + hi) * d..][..d];
    scores.clear();
    for j in 0..sk {
        let krow = &k.data[((bi * sk + j) * h + hi) * d..][..d];
        scores.push((dot(qrow, krow) * scale as f64) as f32);
    }
}

fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
    let [b, sq, h, _] = dims4(&q.shape);
    let sk = k.shape.dims()[1];
    let dv = v.shape.dims()[3];
    let mut out = vec![0f32; b * sq * h * dv];
    let mut scores = Vec::with_capacity(sk);
    let mut probs = Vec::with_capacity(sk);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                row_scores(q, k, scale, [bi, hi, i], &mut scores);
                probs.clear();
                softmax_row(&scores, &mut probs);
                let orow = &mut out[((bi * sq + i) * h + hi) * dv..][..dv];
                for (e, o) in orow.iter_mut().enumerate() {
                    let acc: f64 = (0..sk)
                        .map(|j| probs[j] as f64 * v.data[((bi * sk + j) * h + hi) * dv + e] as f64)
                        .sum();
                    *o = acc as f32;
                }
            }
        }
    }
    out
}

/// Headroom of the fp8 probabilities: `P ∈ (0, 1]` is stored as
/// `e4m3(256·P)`, so the largest probability of a row (1) becomes 256 (the
/// largest power of two below e4m3's 448) and small ones keep e4m3's normal
/// range down to `P = 2⁻¹⁴` instead of `2⁻⁶`.
pub(crate) const PROB_HEADROOM: f32 = 256.0;

/// `x8 · scale` for every element: an fp8 operand dequantized with its
/// per-tensor scale, as `DynamicScale`/`Quantize` define it.
fn dequantize(x8: &Tensor, scale: &Tensor) -> Tensor {
    let s = scale.data[0];
    Tensor {
        shape: x8.shape.clone(),
        data: x8.data.iter().map(|&v| v * s).collect(),
    }
}

/// [`Op::ScaledAttention`]: operands (q8, q_scale, k8, k_scale, v,
/// v_scale), v quantized here to e4m3 by its scale. Each score is the dot
/// product of the e4m3 rows (exact in f64) rounded to f16, as the kernel's
/// accumulator holds it, times `scale · q_scale · k_scale`; the row max is
/// taken over those; the numerator sums `e4m3(256·P)/256 · v`, the
/// denominator the same rounded `P`; the result is rounded to bf16. No keys:
/// zeros, as [`attention`] gives.
fn scaled_attention(args: &[&Tensor], scale: f32) -> Vec<f32> {
    let (q8, k8) = (args[0], args[2]);
    let score_scale = f64::from(scale) * f64::from(args[1].data[0]) * f64::from(args[3].data[0]);
    let v8 = Tensor {
        shape: args[4].shape.clone(),
        data: quantize(args[4], args[5], DType::F8E4M3),
    };
    let v = dequantize(&v8, args[5]);
    let [b, sq, h, d] = dims4(&q8.shape);
    let sk = k8.shape.dims()[1];
    let dv = v.shape.dims()[3];
    let mut out = vec![0f32; b * sq * h * dv];
    if sk == 0 {
        return out;
    }
    let mut scores = Vec::with_capacity(sk);
    let mut p8 = Vec::with_capacity(sk);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let qrow = &q8.data[((bi * sq + i) * h + hi) * d..][..d];
                scores.clear();
                for j in 0..sk {
                    let krow = &k8.data[((bi * sk + j) * h + hi) * d..][..d];
                    let s16 = half::f16::from_f64(dot(qrow, krow));
                    scores.push((s16.to_f64() * score_scale) as f32);
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f64;
                p8.clear();
                for &s in &scores {
                    let p = ((s - max) as f64).exp();
                    let rounded = DType::F8E4M3.round(PROB_HEADROOM * p as f32);
                    let p_rounded = rounded as f64 / PROB_HEADROOM as f64;
                    sum += p_rounded;
                    p8.push(p_rounded);
                }
                let orow = &mut out[((bi * sq + i) * h + hi) * dv..][..dv];
                for (e, o) in orow.iter_mut().enumerate() {
                    let acc: f64 = (0..sk)
                        .map(|j| p8[j] * v.data[((bi * sk + j) * h + hi) * dv + e] as f64)
                        .sum();
                    *o = DType::BF16.round((acc / sum) as f32);
                }
            }
        }
    }
    out
}

/// Computed in f64 and rounded once, as diffusers' `FluxPosEmbed` does.
fn rope_table(ids: &Tensor, axes_dim: &[usize], theta: f32) -> Vec<f32> {
    let axes = axes_dim.len();
    let seq = ids.shape.dims()[0];
    let mut out = Vec::with_capacity(seq * axes_dim.iter().sum::<usize>());
    for s in 0..seq {
        for (a, &dim) in axes_dim.iter().enumerate() {
            let pos = ids.data[s * axes + a] as f64;
            for j in 0..dim / 2 {
                let freq = 1.0 / (theta as f64).powf((2 * j) as f64 / dim as f64);
                let angle = pos * freq;
                out.push(angle.cos() as f32);
                out.push(angle.sin() as f32);
            }
        }
    }
    out
}

fn apply_rope(x: &Tensor, table: &Tensor) -> Vec<f32> {
    let [b, s, h, d] = dims4(&x.shape);
    let mut out = vec![0f32; x.data.len()];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let base = ((bi * s + si) * h + hi) * d;
                for i in 0..d / 2 {
                    let cos = table.data[(si * (d / 2) + i) * 2];
                    let sin = table.data[(si * (d / 2) + i) * 2 + 1];
                    let (re, im) = (x.data[base + 2 * i], x.data[base + 2 * i + 1]);
                    out[base + 2 * i] = re * cos - im * sin;
                    out[base + 2 * i + 1] = im * cos + re * sin;
                }
            }
        }
    }
    out
}

/// Follows diffusers' `get_timestep_embedding` step by step in f32, so the
/// angles round the same way.
fn timestep_embedding(t: &Tensor, p: &TimestepParams) -> Vec<f32> {
    let half = p.dim / 2;
    let log_max = -(p.max_period.get() as f64).ln() as f32;
    let denom = half as f32 - p.downscale_freq_shift.get();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_max * i as f32 / denom).exp())
        .collect();
    let mut out = Vec::with_capacity(t.data.len() * p.dim);
    for &ts in &t.data {
        let angles: Vec<f32> = freqs.iter().map(|&f| p.scale.get() * (ts * f)).collect();
        let sin = angles.iter().map(|a| a.sin());
        let cos = angles.iter().map(|a| a.cos());
        if p.flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
    }
    out
}

fn permute(x: &Tensor, perm: &[usize]) -> Vec<f32> {
    let in_strides = x.shape.strides();
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.shape.dims()[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut index = vec![0usize; out_dims.len()];
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(x.data.len());
    for _ in 0..x.data.len() {
        out.push(x.data[offset]);
        for d in (0..out_dims.len()).rev() {
            index[d] += 1;
            offset += strides[d];
            if index[d] < out_dims[d] {
                break;
            }
            offset -= strides[d] * out_dims[d];
            index[d] = 0;
        }
    }
    out
}

/// `(outer, extent, inner)` around `axis`: the tensor as `[outer, extent, inner]`.
fn around(shape: &Shape, axis: usize) -> (usize, usize, usize) {
    let d = shape.dims();
    (
        d[..axis].iter().product(),
        d[axis],
        d[axis + 1..].iter().product(),
    )
}

fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> Vec<f32> {
    let (outer, extent, inner) = around(&x.shape, axis);
    let mut out = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        out.extend_from_slice(&x.data[(o * extent + start) * inner..(o * extent + end) * inner]);
    }
    out
}

fn concat(args: &[&Tensor], axis: usize) -> Vec<f32> {
    let (outer, _, _) = around(&args[0].shape, axis);
    let mut out = Vec::new();
    for o in 0..outer {
        for t in args {
            let (_, extent, inner) = around(&t.shape, axis);
            out.extend_from_slice(&t.data[o * extent * inner..(o + 1) * extent * inner]);
        }
    }
    out
}

fn upsample_nearest(x: &Tensor, scale: usize) -> Vec<f32> {
    let [n, h, w, c] = dims4(&x.shape);
    let mut out = Vec::with_capacity(x.data.len() * scale * scale);
    for b in 0..n {
        for oy in 0..h * scale {
            for ox in 0..w * scale {
                let base = ((b * h + oy / scale) * w + ox / scale) * c;
                out.extend_from_slice(&x.data[base..base + c]);
            }
        }
    }
    out
}

fn im2col(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: &Shape,
) -> Vec<f32> {
    let [n, h, w, c] = dims4(&x.shape);
    let (ho, wo) = (out.dims()[1], out.dims()[2]);
    let mut data = Vec::with_capacity(out.numel());
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                        let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                        if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                            data.extend(std::iter::repeat_n(0.0, c));
                        } else {
                            let base = ((b * h + iy as usize) * w + ix as usize) * c;
                            data.extend_from_slice(&x.data[base..base + c]);
                        }
                    }
                }
            }
        }
    }
    data
}

fn dims4(s: &Shape) -> [usize; 4] {
    let d = s.dims();
    [d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scalar;

    /// Attention and scaled attention with no keys (a shape graphs cannot
    /// hold, since type inference rejects empty tensors, but the kernels'
    /// contract has: they write zeros) agree: all zeros.
    #[test]
    fn no_keys_give_zeros() {
        let q = Tensor::new([1, 2, 1, 4], vec![0.5; 8]).unwrap();
        let kv = Tensor::new([1, 0, 1, 4], vec![]).unwrap();
        let one = Tensor::new([1], vec![1.0]).unwrap();
        let out_shape = Shape::from([1, 2, 1, 4]);
        let plain = eval(
            &Op::Attention { scale: Scalar(0.5) },
            &[&q, &kv, &kv],
            &out_shape,
        );
        let scaled = eval(
            &Op::ScaledAttention { scale: Scalar(0.5) },
            &[&q, &one, &kv, &one, &kv, &one],
            &out_shape,
        );
        assert_eq!(plain.data, vec![0.0; 8]);
        assert_eq!(scaled.data, vec![0.0; 8]);
    }
}
