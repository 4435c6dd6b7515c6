//! Type inference: the output dtype and shape of every op from its operands.
//!
//! This is where each op's operand contract (arity, ranks, matching dims and
//! dtypes) is enforced. The builder calls it when a node is added and the
//! verifier calls it again on whole graphs, so a pass that builds an
//! ill-typed node is caught at once. Errors are plain sentences; the caller
//! adds which node and scope they belong to.

use crate::{DType, Op, Shape, TensorType};

/// Infers the type of `op` applied to operands of types `operands`.
/// `Op::Input` has no rule (its type is declared) and is rejected here.
/// Tensors with a zero-sized dimension are rejected: nothing in a FLUX model
/// is empty, and every kernel may assume at least one element per row.
pub fn infer(op: &Op, operands: &[&TensorType]) -> Result<TensorType, String> {
    let ty = infer_op(op, operands)?;
    check_not_empty(&ty)?;
    Ok(ty)
}

/// Fails when `ty` has a zero-sized dimension.
pub(crate) fn check_not_empty(ty: &TensorType) -> Result<(), String> {
    if ty.shape.dims().contains(&0) {
        return Err(format!("{ty} has a zero-sized dimension"));
    }
    Ok(())
}

fn infer_op(op: &Op, operands: &[&TensorType]) -> Result<TensorType, String> {
    let x = operands.first().copied();
    match op {
        Op::Input { .. } => Err("inputs have declared types, not inferred ones".into()),
        Op::Unary(_) | Op::BinaryScalar { .. } => {
            arity(op, operands, 1, 1)?;
            float(x.unwrap())?;
            Ok(x.unwrap().clone())
        }
        Op::Cast(to) => {
            arity(op, operands, 1, 1)?;
            Ok(TensorType::new(*to, x.unwrap().shape.clone()))
        }
        Op::Binary(_) => {
            arity(op, operands, 2, 2)?;
            let (a, b) = (operands[0], operands[1]);
            same_dtype(a, b)?;
            float(a)?;
            let shape = Shape::broadcast(&a.shape, &b.shape)
                .ok_or_else(|| format!("shapes {} and {} do not broadcast", a.shape, b.shape))?;
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Linear => {
            arity(op, operands, 2, 3)?;
            let (x, w) = (operands[0], operands[1]);
            same_dtype(x, w)?;
            rank_at_least("input", x, 1)?;
            rank_eq("weight", w, 2)?;
            let k = x.shape.last().unwrap();
            let [n, wk] = [w.shape.0[0], w.shape.0[1]];
            if k != wk {
                return Err(format!(
                    "input has {k} features but weight {} expects {wk}",
                    w.shape
                ));
            }
            if let Some(b) = operands.get(2) {
                same_dtype(x, b)?;
                if b.shape.0 != [n] {
                    return Err(format!("bias shape {} should be [{n}]", b.shape));
                }
            }
            let mut dims = x.shape.0.clone();
            *dims.last_mut().unwrap() = n;
            Ok(TensorType::new(x.dtype, dims))
        }
        Op::MatMul => {
            arity(op, operands, 2, 2)?;
            let (a, b) = (operands[0], operands[1]);
            same_dtype(a, b)?;
            rank_at_least("lhs", a, 2)?;
            rank_at_least("rhs", b, 2)?;
            let (ra, rb) = (a.shape.rank(), b.shape.rank());
            let (m, k) = (a.shape.0[ra - 2], a.shape.0[ra - 1]);
            let (kb, n) = (b.shape.0[rb - 2], b.shape.0[rb - 1]);
            if k != kb {
                return Err(format!("inner dims differ: {} · {}", a.shape, b.shape));
            }
            let batch = Shape::broadcast(
                &Shape::from(&a.shape.0[..ra - 2]),
                &Shape::from(&b.shape.0[..rb - 2]),
            )
            .ok_or_else(|| format!("batch dims of {} and {} do not broadcast", a.shape, b.shape))?;
            let mut dims = batch.0;
            dims.extend([m, n]);
            Ok(TensorType::new(a.dtype, dims))
        }
        Op::Conv2d {
            stride,
            padding,
            groups,
        } => {
            arity(op, operands, 2, 3)?;
            let (x, w) = (operands[0], operands[1]);
            same_dtype(x, w)?;
            rank_eq("input (NHWC)", x, 4)?;
            rank_eq("weight", w, 4)?;
            let [n, h, wd, cin] = dims4(&x.shape);
            let [cout, cin_g, kh, kw] = dims4(&w.shape);
            if *groups == 0 || cin % groups != 0 || cout % groups != 0 {
                return Err(format!(
                    "groups={groups} must divide input channels {cin} and output channels {cout}"
                ));
            }
            if cin / groups != cin_g {
                return Err(format!(
                    "weight {} expects {} input channels per group, input has {cin}/{groups}",
                    w.shape, cin_g
                ));
            }
            if stride[0] == 0 || stride[1] == 0 {
                return Err("stride must be positive".into());
            }
            if h + 2 * padding[0] < kh || wd + 2 * padding[1] < kw {
                return Err(format!(
                    "kernel {kh}x{kw} is larger than the padded input {}x{}",
                    h + 2 * padding[0],
                    wd + 2 * padding[1]
                ));
            }
            if let Some(b) = operands.get(2) {
                same_dtype(x, b)?;
                if b.shape.0 != [cout] {
                    return Err(format!("bias shape {} should be [{cout}]", b.shape));
                }
            }
            let ho = (h + 2 * padding[0] - kh) / stride[0] + 1;
            let wo = (wd + 2 * padding[1] - kw) / stride[1] + 1;
            Ok(TensorType::new(x.dtype, [n, ho, wo, cout]))
        }
        Op::LayerNorm { .. } => {
            if operands.len() == 2 {
                return Err("layer_norm takes x, or x with both weight and bias".into());
            }
            arity(op, operands, 1, 3)?;
            norm_params(operands)
        }
        Op::RmsNorm { .. } => {
            arity(op, operands, 1, 2)?;
            norm_params(operands)
        }
        Op::GroupNorm { groups, .. } => {
            arity(op, operands, 3, 3)?;
            let x = operands[0];
            rank_eq("input (NHWC)", x, 4)?;
            let c = x.shape.0[3];
            if *groups == 0 || c % groups != 0 {
                return Err(format!("groups={groups} must divide the {c} channels"));
            }
            norm_params(operands)
        }
        Op::Softmax => {
            arity(op, operands, 1, 1)?;
            float(x.unwrap())?;
            rank_at_least("input", x.unwrap(), 1)?;
            Ok(x.unwrap().clone())
        }
        Op::Attention { .. } => {
            arity(op, operands, 3, 3)?;
            let (q, k, v) = (operands[0], operands[1], operands[2]);
            same_dtype(q, k)?;
            same_dtype(q, v)?;
            let dims = attention_dims(q, k, v)?;
            Ok(TensorType::new(q.dtype, dims))
        }
        Op::ScaledAttention { .. } => {
            arity(op, operands, 6, 6)?;
            let [q, qs, k, ks, v, vs] = [0, 1, 2, 3, 4, 5].map(|i| operands[i]);
            for (what, t) in [("q", q), ("k", k)] {
                if t.dtype != DType::F8E4M3 {
                    return Err(format!("{what} must be f8e4m3, found {t}"));
                }
            }
            // v comes unquantized: the op quantizes it by its scale.
            if !matches!(v.dtype, DType::BF16 | DType::F16 | DType::F32) {
                return Err(format!(
                    "v must be unquantized (bf16, f16 or f32), found {v}"
                ));
            }
            for (what, s) in [("q scale", qs), ("k scale", ks), ("v scale", vs)] {
                if s.dtype != DType::F32 || s.shape.0 != [1] {
                    return Err(format!(
                        "{what} {s} should be f32[1] (one scale per tensor)"
                    ));
                }
            }
            let dims = attention_dims(q, k, v)?;
            Ok(TensorType::new(DType::BF16, dims))
        }
        Op::RopeTable { axes_dim, .. } => {
            arity(op, operands, 1, 1)?;
            let ids = x.unwrap();
            rank_eq("ids", ids, 2)?;
            if ids.shape.0[1] != axes_dim.len() {
                return Err(format!(
                    "ids {} have {} axes but {} rotary widths are given",
                    ids.shape,
                    ids.shape.0[1],
                    axes_dim.len()
                ));
            }
            if let Some(odd) = axes_dim.iter().find(|d| *d % 2 != 0) {
                return Err(format!("rotary width {odd} is odd"));
            }
            let pairs = axes_dim.iter().sum::<usize>() / 2;
            Ok(TensorType::new(DType::F32, [ids.shape.0[0], pairs, 2]))
        }
        Op::ApplyRope => {
            arity(op, operands, 2, 2)?;
            let (x, table) = (operands[0], operands[1]);
            float(x)?;
            rank_eq("input", x, 4)?;
            let [_, s, _, d] = dims4(&x.shape);
            if table.dtype != DType::F32 {
                return Err(format!("rotary table must be f32, found {}", table.dtype));
            }
            if table.shape.0 != [s, d / 2, 2] || d % 2 != 0 {
                return Err(format!(
                    "rotary table {} should be [{s},{},2] for input {}",
                    table.shape,
                    d / 2,
                    x.shape
                ));
            }
            Ok(x.clone())
        }
        Op::TimestepEmbedding(p) => {
            arity(op, operands, 1, 1)?;
            let t = x.unwrap();
            rank_eq("timesteps", t, 1)?;
            if p.dim == 0 || p.dim % 2 != 0 {
                return Err(format!(
                    "embedding width {} must be even and positive",
                    p.dim
                ));
            }
            Ok(TensorType::new(DType::F32, [t.shape.0[0], p.dim]))
        }
        Op::Reshape(shape) => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            if shape.numel() != x.shape.numel() {
                return Err(format!(
                    "cannot reshape {} ({} elements) to {} ({} elements)",
                    x.shape,
                    x.shape.numel(),
                    shape,
                    shape.numel()
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Permute(perm) => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            let mut seen = vec![false; x.shape.rank()];
            if perm.len() != x.shape.rank() {
                return Err(format!(
                    "permutation {perm:?} does not fit rank {}",
                    x.shape.rank()
                ));
            }
            for &p in perm {
                if p >= seen.len() || seen[p] {
                    return Err(format!("{perm:?} is not a permutation"));
                }
                seen[p] = true;
            }
            let dims: Vec<usize> = perm.iter().map(|&p| x.shape.0[p]).collect();
            Ok(TensorType::new(x.dtype, dims))
        }
        Op::Slice { axis, start, end } => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            let extent = *x
                .shape
                .0
                .get(*axis)
                .ok_or_else(|| format!("axis {axis} out of range for {}", x.shape))?;
            if start >= end || *end > extent {
                return Err(format!(
                    "slice {start}..{end} is empty or outside 0..{extent} on axis {axis}"
                ));
            }
            let mut dims = x.shape.0.clone();
            dims[*axis] = end - start;
            Ok(TensorType::new(x.dtype, dims))
        }
        Op::Concat { axis } => {
            if operands.len() < 2 {
                return Err("concat needs at least two operands".into());
            }
            let first = operands[0];
            if *axis >= first.shape.rank() {
                return Err(format!("axis {axis} out of range for {}", first.shape));
            }
            let mut total = 0;
            for t in operands {
                same_dtype(first, t)?;
                let same_elsewhere = t.shape.rank() == first.shape.rank()
                    && (0..t.shape.rank()).all(|i| i == *axis || t.shape.0[i] == first.shape.0[i]);
                if !same_elsewhere {
                    return Err(format!(
                        "cannot concatenate {} and {} along axis {axis}",
                        first.shape, t.shape
                    ));
                }
                total += t.shape.0[*axis];
            }
            let mut dims = first.shape.0.clone();
            dims[*axis] = total;
            Ok(TensorType::new(first.dtype, dims))
        }
        Op::DynamicScale { dtype, per_row } => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            float(x)?;
            fp8(*dtype)?;
            rank_at_least("input", x, 1)?;
            Ok(TensorType::new(DType::F32, scale_shape(&x.shape, *per_row)))
        }
        Op::Quantize(dtype) => {
            arity(op, operands, 2, 2)?;
            let (x, scale) = (operands[0], operands[1]);
            float(x)?;
            fp8(*dtype)?;
            check_scale("scale", scale, &x.shape)?;
            Ok(TensorType::new(*dtype, x.shape.clone()))
        }
        Op::ScaledLinear { out } => {
            arity(op, operands, 4, 5)?;
            let (xq, xs, wq, ws) = (operands[0], operands[1], operands[2], operands[3]);
            if !xq.dtype.is_fp8() || !wq.dtype.is_fp8() {
                return Err(format!("operands must be fp8, found {xq} and {wq}"));
            }
            rank_at_least("input", xq, 1)?;
            rank_eq("weight", wq, 2)?;
            let k = xq.shape.last().unwrap();
            let [n, wk] = [wq.shape.0[0], wq.shape.0[1]];
            if k != wk {
                return Err(format!(
                    "input has {k} features but weight {} expects {wk}",
                    wq.shape
                ));
            }
            check_scale("input scale", xs, &xq.shape)?;
            check_scale("weight scale", ws, &wq.shape)?;
            if let Some(b) = operands.get(4) {
                if b.dtype != *out || b.shape.0 != [n] {
                    return Err(format!("bias {b} should be {out}[{n}]"));
                }
            }
            let mut dims = xq.shape.0.clone();
            *dims.last_mut().unwrap() = n;
            Ok(TensorType::new(*out, dims))
        }
        Op::UpsampleNearest { scale } => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            rank_eq("input (NHWC)", x, 4)?;
            if *scale == 0 {
                return Err("scale must be positive".into());
            }
            let [n, h, w, c] = dims4(&x.shape);
            Ok(TensorType::new(x.dtype, [n, h * scale, w * scale, c]))
        }
        Op::Im2col {
            kernel,
            stride,
            padding,
        } => {
            arity(op, operands, 1, 1)?;
            let x = x.unwrap();
            rank_eq("input (NHWC)", x, 4)?;
            let [n, h, w, c] = dims4(&x.shape);
            let [kh, kw] = *kernel;
            if kh == 0 || kw == 0 || stride[0] == 0 || stride[1] == 0 {
                return Err("kernel and stride must be positive".into());
            }
            if h + 2 * padding[0] < kh || w + 2 * padding[1] < kw {
                return Err(format!(
                    "kernel {kh}x{kw} is larger than the padded input {}x{}",
                    h + 2 * padding[0],
                    w + 2 * padding[1]
                ));
            }
            let ho = (h + 2 * padding[0] - kh) / stride[0] + 1;
            let wo = (w + 2 * padding[1] - kw) / stride[1] + 1;
            Ok(TensorType::new(x.dtype, [n, ho, wo, kh * kw * c]))
        }
    }
}

/// The output dims `[B, Sq, H, Dv]` of attention over q `[B, Sq, H, D]`,
/// k `[B, Sk, H, D]` and v `[B, Sk, H, Dv]`, after checking that they fit.
fn attention_dims(q: &TensorType, k: &TensorType, v: &TensorType) -> Result<[usize; 4], String> {
    for (what, t) in [("q", q), ("k", k), ("v", v)] {
        rank_eq(what, t, 4)?;
    }
    let [b, sq, h, d] = dims4(&q.shape);
    let [kb, sk, kh, kd] = dims4(&k.shape);
    let [vb, vs, vh, dv] = dims4(&v.shape);
    if (kb, kh, kd) != (b, h, d) {
        return Err(format!(
            "k {} does not match q {} in batch, heads or head dim",
            k.shape, q.shape
        ));
    }
    if (vb, vs, vh) != (b, sk, h) {
        return Err(format!(
            "v {} does not match k {} in batch, length or heads",
            v.shape, k.shape
        ));
    }
    Ok([b, sq, h, dv])
}

/// The shape of a dynamic scale of a tensor of `shape`: `[1]`, or one per row.
fn scale_shape(shape: &Shape, per_row: bool) -> Vec<usize> {
    if per_row {
        let mut dims = shape.0.clone();
        *dims.last_mut().unwrap() = 1;
        dims
    } else {
        vec![1]
    }
}

/// A scale operand must be f32 and either per tensor or per row of `of`.
fn check_scale(what: &str, scale: &TensorType, of: &Shape) -> Result<(), String> {
    let per_row = of.rank() >= 1 && scale.shape.0 == scale_shape(of, true);
    if scale.dtype != DType::F32 || !(scale.shape.0 == [1] || per_row) {
        return Err(format!(
            "{what} {scale} should be f32[1] or f32{} for {of}",
            Shape::new(scale_shape(of, true))
        ));
    }
    Ok(())
}

fn fp8(dtype: DType) -> Result<(), String> {
    if !dtype.is_fp8() {
        return Err(format!("{dtype} is not an fp8 dtype"));
    }
    Ok(())
}

/// Norm operands: x, then per-channel params of shape `[C]` in x's dtype.
fn norm_params(operands: &[&TensorType]) -> Result<TensorType, String> {
    let x = operands[0];
    float(x)?;
    rank_at_least("input", x, 1)?;
    let c = x.shape.last().unwrap();
    for p in &operands[1..] {
        same_dtype(x, p)?;
        if p.shape.0 != [c] {
            return Err(format!("parameter shape {} should be [{c}]", p.shape));
        }
    }
    Ok(x.clone())
}

fn arity(op: &Op, operands: &[&TensorType], min: usize, max: usize) -> Result<(), String> {
    let n = operands.len();
    if n < min || n > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(format!("{} takes {want} operands, got {n}", op.kind_name()));
    }
    Ok(())
}

fn same_dtype(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dtype != b.dtype {
        return Err(format!("dtype mismatch: {a} vs {b}"));
    }
    Ok(())
}

fn float(t: &TensorType) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("expected a float tensor, found {t}"));
    }
    Ok(())
}

fn rank_eq(what: &str, t: &TensorType, rank: usize) -> Result<(), String> {
    if t.shape.rank() != rank {
        return Err(format!("{what} must have rank {rank}, found {}", t.shape));
    }
    Ok(())
}

fn rank_at_least(what: &str, t: &TensorType, rank: usize) -> Result<(), String> {
    if t.shape.rank() < rank {
        return Err(format!("{what} must have rank ≥ {rank}, found {}", t.shape));
    }
    Ok(())
}

fn dims4(s: &Shape) -> [usize; 4] {
    [s.0[0], s.0[1], s.0[2], s.0[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryOp, Scalar};

    fn t(d: &[usize]) -> TensorType {
        TensorType::new(DType::F32, d)
    }

    #[test]
    fn linear_checks_features_and_bias() {
        let out = infer(&Op::Linear, &[&t(&[1, 5, 8]), &t(&[3, 8]), &t(&[3])]).unwrap();
        assert_eq!(out, t(&[1, 5, 3]));
        let err = infer(&Op::Linear, &[&t(&[1, 5, 8]), &t(&[3, 7])]).unwrap_err();
        assert!(err.contains("8 features"), "{err}");
        let err = infer(&Op::Linear, &[&t(&[5, 8]), &t(&[3, 8]), &t(&[4])]).unwrap_err();
        assert!(err.contains("bias"), "{err}");
    }

    #[test]
    fn conv_output_size() {
        let op = Op::Conv2d {
            stride: [2, 2],
            padding: [1, 1],
            groups: 1,
        };
        let out = infer(&op, &[&t(&[1, 8, 8, 4]), &t(&[6, 4, 3, 3])]).unwrap();
        assert_eq!(out, t(&[1, 4, 4, 6]));
    }

    #[test]
    fn im2col_output_size() {
        let op = Op::Im2col {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        };
        // As the conv above: 4×4 pixels, 3·3·4 columns each.
        assert_eq!(infer(&op, &[&t(&[1, 8, 8, 4])]).unwrap(), t(&[1, 4, 4, 36]));
        let too_big = Op::Im2col {
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
        };
        assert!(infer(&too_big, &[&t(&[1, 3, 3, 2])])
            .unwrap_err()
            .contains("larger than the padded input"));
    }

    #[test]
    fn binary_rejects_mixed_dtypes_and_bad_broadcast() {
        let add = Op::Binary(BinaryOp::Add);
        let bf = TensorType::new(DType::BF16, [2]);
        assert!(infer(&add, &[&t(&[2]), &bf]).unwrap_err().contains("dtype"));
        assert!(infer(&add, &[&t(&[2, 3]), &t(&[2])])
            .unwrap_err()
            .contains("broadcast"));
    }

    #[test]
    fn attention_and_rope_shapes() {
        let q = t(&[1, 6, 2, 4]);
        let kv = t(&[1, 9, 2, 4]);
        let op = Op::Attention { scale: Scalar(0.5) };
        assert_eq!(infer(&op, &[&q, &kv, &kv]).unwrap(), q);
        let table = infer(
            &Op::RopeTable {
                axes_dim: vec![2, 2],
                theta: Scalar(10000.0),
            },
            &[&t(&[6, 2])],
        )
        .unwrap();
        assert_eq!(table, t(&[6, 2, 2]));
        assert_eq!(infer(&Op::ApplyRope, &[&q, &table]).unwrap(), q);
    }

    #[test]
    fn scaled_attention_takes_e4m3_operands_and_scalar_scales() {
        let e4m3 = |d: &[usize]| TensorType::new(DType::F8E4M3, d);
        let (q, kv, s) = (e4m3(&[1, 6, 2, 8]), e4m3(&[1, 9, 2, 8]), t(&[1]));
        let v = TensorType::new(DType::BF16, [1, 9, 2, 8]);
        let op = Op::ScaledAttention { scale: Scalar(0.5) };
        assert_eq!(
            infer(&op, &[&q, &s, &kv, &s, &v, &s]).unwrap(),
            TensorType::new(DType::BF16, [1, 6, 2, 8])
        );
        // bf16 keys, an already quantized v, per-row scales, mismatched
        // heads, missing operands.
        let err = infer(&op, &[&q, &s, &v, &s, &v, &s]).unwrap_err();
        assert!(err.contains("k must be f8e4m3"), "{err}");
        let err = infer(&op, &[&q, &s, &kv, &s, &kv, &s]).unwrap_err();
        assert!(err.contains("v must be unquantized"), "{err}");
        let rows = t(&[1, 6, 2, 1]);
        let err = infer(&op, &[&q, &rows, &kv, &s, &v, &s]).unwrap_err();
        assert!(err.contains("q scale") && err.contains("f32[1]"), "{err}");
        let heads = e4m3(&[1, 9, 3, 8]);
        let err = infer(&op, &[&q, &s, &heads, &s, &v, &s]).unwrap_err();
        assert!(err.contains("batch, heads or head dim"), "{err}");
        let err = infer(&op, &[&q, &s, &kv, &s, &v]).unwrap_err();
        assert!(err.contains("takes 6 operands, got 5"), "{err}");
    }

    #[test]
    fn rejects_empty_tensors_and_integer_math() {
        let err = infer(&Op::Reshape(Shape::from([0, 4])), &[&t(&[0, 4])]).unwrap_err();
        assert!(err.contains("zero-sized"), "{err}");
        let i = TensorType::new(DType::I32, [2]);
        assert!(infer(&Op::Binary(BinaryOp::Add), &[&i, &i])
            .unwrap_err()
            .contains("float"));
    }

    #[test]
    fn movement_ops() {
        let x = t(&[2, 3, 4]);
        assert_eq!(
            infer(&Op::Permute(vec![2, 0, 1]), &[&x]).unwrap(),
            t(&[4, 2, 3])
        );
        assert!(infer(&Op::Permute(vec![0, 0, 1]), &[&x]).is_err());
        assert_eq!(
            infer(
                &Op::Slice {
                    axis: 2,
                    start: 1,
                    end: 3
                },
                &[&x]
            )
            .unwrap(),
            t(&[2, 3, 2])
        );
        assert!(infer(&Op::Reshape(Shape::from([5, 5])), &[&x]).is_err());
        assert_eq!(
            infer(&Op::Concat { axis: 1 }, &[&x, &t(&[2, 5, 4])]).unwrap(),
            t(&[2, 8, 4])
        );
    }
}
