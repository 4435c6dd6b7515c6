//! Applying a [`WeightSource`] derivation to stored tensors, on the host in f32.
//!
//! Derivations other than `Reshape`, `Permute` and the fp8 ones only
//! rearrange rows (dim 0), so such a derived tensor is a sequence of row
//! ranges of stored tensors. [`derived_shape`] checks a
//! derivation against the stored shapes without reading data; [`materialize`]
//! then walks it with the window of rows wanted, pushing the window down to
//! the stored tensors, so slicing q out of a fused qkv converts only q's rows.

use std::ops::Range;

use fluxc_artifact::{Fp8Format, WeightSource};

use crate::error::ShapeText;
use crate::fp8;
use crate::safetensors_io::row_layout;
use crate::{CheckpointError, DeriveError, HostTensor};

/// Stored tensors by (logical) name: what derivations read.
pub(crate) trait RowSource {
    /// Shape of the stored tensor `name`.
    fn stored_shape(&self, name: &str) -> Result<Vec<usize>, CheckpointError>;
    /// Rows `rows` of the stored tensor `name` in f32 (rank 0: one row).
    fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>, CheckpointError>;
}

/// The shape `source` derives, checking every step against the stored shapes.
/// `weight` names the graph weight in errors.
pub(crate) fn derived_shape(
    weight: &str,
    source: &WeightSource,
    store: &impl RowSource,
) -> Result<Vec<usize>, CheckpointError> {
    let fail = |e| derive_error(weight, source, e);
    match source {
        WeightSource::Tensor { name } => store.stored_shape(name),
        WeightSource::Rows { of, start, len } => {
            let mut shape = derived_shape(weight, of, store)?;
            let rows = *shape.first().ok_or_else(|| fail(DeriveError::NoRows))?;
            let in_range = start.checked_add(*len).is_some_and(|end| end <= rows);
            if !in_range {
                return Err(fail(DeriveError::RowsOutOfRange {
                    start: *start,
                    len: *len,
                    rows,
                }));
            }
            shape[0] = *len;
            Ok(shape)
        }
        WeightSource::SwapHalves { of } => {
            let shape = derived_shape(weight, of, store)?;
            let rows = *shape.first().ok_or_else(|| fail(DeriveError::NoRows))?;
            if rows % 2 != 0 {
                return Err(fail(DeriveError::OddHalves { rows }));
            }
            Ok(shape)
        }
        WeightSource::Concat { parts } => concat_shape(weight, parts, store),
        WeightSource::Reshape { of, shape } => {
            let from = derived_shape(weight, of, store)?;
            let count = |s: &[usize]| s.iter().fold(1usize, |a, &d| a.saturating_mul(d));
            if count(&from) != count(shape) {
                return Err(fail(DeriveError::ReshapeCount {
                    from: ShapeText(from),
                    to: ShapeText(shape.clone()),
                }));
            }
            Ok(shape.clone())
        }
        WeightSource::Permute { of, perm } => {
            let from = derived_shape(weight, of, store)?;
            if !is_permutation(perm, from.len()) {
                return Err(fail(DeriveError::BadPermutation {
                    perm: perm.clone(),
                    rank: from.len(),
                }));
            }
            Ok(perm.iter().map(|&a| from[a]).collect())
        }
        WeightSource::Fp8Quantize { of, .. } => derived_shape(weight, of, store),
        WeightSource::Fp8Scale { of, per_row, .. } => {
            let mut shape = derived_shape(weight, of, store)?;
            if !*per_row || shape.is_empty() {
                return Ok(vec![1]);
            }
            *shape.last_mut().expect("not empty") = 1;
            Ok(shape)
        }
    }
}

/// The shape of `parts` stacked along dim 0.
fn concat_shape(
    weight: &str,
    parts: &[WeightSource],
    store: &impl RowSource,
) -> Result<Vec<usize>, CheckpointError> {
    let (first, rest) = parts
        .split_first()
        .ok_or_else(|| derive_error(weight, &concat(parts), DeriveError::EmptyConcat))?;
    let mut shape = derived_shape(weight, first, store)?;
    if shape.is_empty() {
        return Err(derive_error(weight, first, DeriveError::NoRows));
    }
    for part in rest {
        let other = derived_shape(weight, part, store)?;
        if other.is_empty() || other[1..] != shape[1..] {
            return Err(derive_error(
                weight,
                &concat(parts),
                DeriveError::ConcatMismatch {
                    first: ShapeText(shape),
                    other: ShapeText(other),
                },
            ));
        }
        shape[0] = shape[0].saturating_add(other[0]);
    }
    Ok(shape)
}

/// The tensor `source` derives, in f32.
pub(crate) fn materialize(
    weight: &str,
    source: &WeightSource,
    store: &impl RowSource,
) -> Result<HostTensor, CheckpointError> {
    let shape = derived_shape(weight, source, store)?;
    let (rows, row_elems) = row_layout(&shape);
    let mut data = Vec::with_capacity(rows.saturating_mul(row_elems));
    append_rows(weight, source, 0..rows, store, &mut data)?;
    HostTensor::new(shape, data)
        .map_err(|e| derive_error(weight, source, DeriveError::Inconsistent(e)))
}

/// Appends rows `rows` of what `source` derives to `out`. The derivation has
/// been checked by [`derived_shape`], and `rows` is within it.
fn append_rows(
    weight: &str,
    source: &WeightSource,
    rows: Range<usize>,
    store: &impl RowSource,
    out: &mut Vec<f32>,
) -> Result<(), CheckpointError> {
    if rows.is_empty() {
        return Ok(());
    }
    match source {
        WeightSource::Tensor { name } => out.extend(store.read_rows(name, rows)?),
        WeightSource::Rows { of, start, .. } => {
            append_rows(weight, of, shift_up(&rows, *start), store, out)?
        }
        WeightSource::SwapHalves { of } => {
            let half = leading_dim(weight, of, store)? / 2;
            // Output rows below `half` are the source's upper half, and
            // the rest its lower half.
            let low = rows.start.min(half)..rows.end.min(half);
            let high = rows.start.max(half)..rows.end.max(half);
            append_rows(weight, of, shift_up(&low, half), store, out)?;
            append_rows(weight, of, high.start - half..high.end - half, store, out)?;
        }
        WeightSource::Concat { parts } => {
            let mut offset = 0;
            for part in parts {
                let n = leading_dim(weight, part, store)?;
                let start = rows.start.max(offset);
                let end = rows.end.min(offset.saturating_add(n));
                if start < end {
                    append_rows(weight, part, start - offset..end - offset, store, out)?;
                }
                offset = offset.saturating_add(n);
            }
        }
        // The rest need the whole source: reshaped rows need not align with
        // the source's, and scales depend on every element.
        WeightSource::Reshape { shape, of } => {
            let row_elems = row_layout(shape).1;
            let all = whole(weight, of, store)?;
            out.extend_from_slice(&all[rows.start * row_elems..rows.end * row_elems]);
        }
        WeightSource::Permute { of, perm } => {
            let (from, all) = (derived_shape(weight, of, store)?, whole(weight, of, store)?);
            let permuted = permute(&from, &all, perm);
            let row_elems = row_layout(&derived_shape(weight, source, store)?).1;
            out.extend_from_slice(&permuted[rows.start * row_elems..rows.end * row_elems]);
        }
        WeightSource::Fp8Quantize {
            of,
            format,
            per_row,
        } => {
            let (shape, all) = (derived_shape(weight, of, store)?, whole(weight, of, store)?);
            let scales = fp8_scales(&shape, &all, *format, *per_row);
            let row_elems = row_layout(&shape).1;
            let last = *shape.last().unwrap_or(&1);
            for r in rows {
                for (i, &v) in all[r * row_elems..(r + 1) * row_elems].iter().enumerate() {
                    let scale = scales[if *per_row {
                        (r * row_elems + i) / last
                    } else {
                        0
                    }];
                    // As the IR's quantize: times the f32 reciprocal.
                    out.push(fp8::round(*format, v * (1.0 / scale)));
                }
            }
        }
        WeightSource::Fp8Scale {
            of,
            format,
            per_row,
        } => {
            let (shape, all) = (derived_shape(weight, of, store)?, whole(weight, of, store)?);
            let scales = fp8_scales(&shape, &all, *format, *per_row);
            let per_out_row = row_layout(&derived_shape(weight, source, store)?).1;
            out.extend_from_slice(&scales[rows.start * per_out_row..rows.end * per_out_row]);
        }
    }
    Ok(())
}

/// Whether `perm` lists each of `rank` axes once.
fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm
            .iter()
            .all(|&a| a < rank && !std::mem::replace(&mut seen[a], true))
}

/// The row-major elements `all` of a tensor of shape `from` with its axes
/// permuted (axis `i` of the result is axis `perm[i]` of the source).
fn permute(from: &[usize], all: &[f32], perm: &[usize]) -> Vec<f32> {
    let mut strides = vec![1usize; from.len()];
    for a in (0..from.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * from[a + 1];
    }
    let to: Vec<usize> = perm.iter().map(|&a| from[a]).collect();
    let mut out = Vec::with_capacity(all.len());
    let mut index = vec![0usize; to.len()];
    for _ in 0..all.len() {
        let at: usize = index.iter().zip(perm).map(|(&i, &a)| i * strides[a]).sum();
        out.push(all[at]);
        // The next index of the result, row-major.
        for a in (0..to.len()).rev() {
            index[a] += 1;
            if index[a] < to[a] {
                break;
            }
            index[a] = 0;
        }
    }
    out
}

/// Every element of what `source` derives, row-major.
fn whole(
    weight: &str,
    source: &WeightSource,
    store: &impl RowSource,
) -> Result<Vec<f32>, CheckpointError> {
    let rows = leading_dim(weight, source, store)?;
    let mut all = Vec::new();
    append_rows(weight, source, 0..rows, store, &mut all)?;
    Ok(all)
}

/// Quantization scales as the IR's `dynamic_scale` defines them:
/// `max(amax, 1e-12) / max_finite`, per tensor or per row of the last axis.
fn fp8_scales(shape: &[usize], all: &[f32], format: Fp8Format, per_row: bool) -> Vec<f32> {
    let max = fp8::max_finite(format);
    let scale = |values: &[f32]| values.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) / max;
    let last = (*shape.last().unwrap_or(&1)).max(1);
    if per_row {
        all.chunks(last).map(scale).collect()
    } else {
        vec![scale(all)]
    }
}

/// `rows` moved up by `by`.
fn shift_up(rows: &Range<usize>, by: usize) -> Range<usize> {
    rows.start + by..rows.end + by
}

/// Dim 0 of what `source` derives.
fn leading_dim(
    weight: &str,
    source: &WeightSource,
    store: &impl RowSource,
) -> Result<usize, CheckpointError> {
    let shape = derived_shape(weight, source, store)?;
    Ok(row_layout(&shape).0)
}

/// A [`CheckpointError::Derive`] for `weight`, whose step `step` failed.
fn derive_error(weight: &str, step: &WeightSource, source: DeriveError) -> CheckpointError {
    CheckpointError::Derive {
        weight: weight.to_string(),
        derivation: describe(step),
        source,
    }
}

/// `parts` stacked, for error messages.
fn concat(parts: &[WeightSource]) -> WeightSource {
    WeightSource::Concat {
        parts: parts.to_vec(),
    }
}

/// A human-readable form of a derivation for error messages, e.g.
/// `rows 0..8 of double_blocks.0.img_attn.qkv.weight`.
pub fn describe(source: &WeightSource) -> String {
    match source {
        WeightSource::Tensor { name } => format!("`{name}`"),
        WeightSource::Rows { of, start, len } => {
            format!(
                "rows {start}..{} of {}",
                start.saturating_add(*len),
                describe(of)
            )
        }
        WeightSource::SwapHalves { of } => format!("halves swapped of {}", describe(of)),
        WeightSource::Concat { parts } => {
            let parts: Vec<String> = parts.iter().map(describe).collect();
            format!("concat[{}]", parts.join(", "))
        }
        WeightSource::Reshape { of, shape } => {
            format!("{} reshaped to {}", describe(of), ShapeText(shape.clone()))
        }
        WeightSource::Permute { of, perm } => {
            format!("{} with axes permuted to {perm:?}", describe(of))
        }
        WeightSource::Fp8Quantize { of, per_row, .. } => {
            format!("fp8 values{} of {}", per_row_text(*per_row), describe(of))
        }
        WeightSource::Fp8Scale { of, per_row, .. } => {
            format!("fp8 scales{} of {}", per_row_text(*per_row), describe(of))
        }
    }
}

fn per_row_text(per_row: bool) -> &'static str {
    if per_row {
        " (per row)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Stored tensors in memory.
    struct Mem(HashMap<String, (Vec<usize>, Vec<f32>)>);

    impl Mem {
        fn new(tensors: &[(&str, Vec<usize>)]) -> Self {
            // Element i of every tensor is i, so derived data shows which rows it took.
            Mem(tensors
                .iter()
                .map(|(n, s)| {
                    let numel: usize = s.iter().product();
                    (
                        n.to_string(),
                        (s.clone(), (0..numel).map(|i| i as f32).collect()),
                    )
                })
                .collect())
        }
    }

    impl RowSource for Mem {
        fn stored_shape(&self, name: &str) -> Result<Vec<usize>, CheckpointError> {
            Ok(self.0[name].0.clone())
        }
        fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>, CheckpointError> {
            let (shape, data) = &self.0[name];
            let (_, w) = row_layout(shape);
            Ok(data[rows.start * w..rows.end * w].to_vec())
        }
    }

    fn t(name: &str) -> WeightSource {
        WeightSource::tensor(name)
    }

    fn run(src: &WeightSource, store: &Mem) -> Result<HostTensor, CheckpointError> {
        materialize("w", src, store)
    }

    #[test]
    fn tensor_is_read_whole() {
        let m = Mem::new(&[("a", vec![2, 3]), ("s", vec![])]);
        let out = run(&t("a"), &m).unwrap();
        assert_eq!(out.shape, vec![2, 3]);
        assert_eq!(out.data, vec![0., 1., 2., 3., 4., 5.]);
        let scalar = run(&t("s"), &m).unwrap();
        assert_eq!(scalar.shape, Vec::<usize>::new());
        assert_eq!(scalar.data, vec![0.]);
    }

    #[test]
    fn rows_slice_dim_zero() {
        let m = Mem::new(&[("a", vec![4, 2])]);
        let out = run(&t("a").rows(1, 2), &m).unwrap();
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(out.data, vec![2., 3., 4., 5.]);
        let nested = run(&t("a").rows(1, 3).rows(1, 1), &m).unwrap();
        assert_eq!(nested.data, vec![4., 5.]);
    }

    #[test]
    fn swap_halves_swaps() {
        let m = Mem::new(&[("a", vec![4])]);
        let out = run(&t("a").swap_halves(), &m).unwrap();
        assert_eq!(out.data, vec![2., 3., 0., 1.]);
        let part = run(&t("a").swap_halves().rows(1, 2), &m).unwrap();
        assert_eq!(part.data, vec![3., 0.]);
        let twice = run(&t("a").swap_halves().swap_halves(), &m).unwrap();
        assert_eq!(twice.data, vec![0., 1., 2., 3.]);
    }

    #[test]
    fn concat_stacks_and_rows_cross_parts() {
        let m = Mem::new(&[("a", vec![2, 2]), ("b", vec![1, 2])]);
        let cat = WeightSource::Concat {
            parts: vec![t("b"), t("a")],
        };
        let out = run(&cat, &m).unwrap();
        assert_eq!(out.shape, vec![3, 2]);
        assert_eq!(out.data, vec![0., 1., 0., 1., 2., 3.]);
        let mid = run(&cat.clone().rows(1, 2), &m).unwrap();
        assert_eq!(mid.data, vec![0., 1., 2., 3.]);
        let swapped = WeightSource::Concat {
            parts: vec![t("a").swap_halves(), t("b")],
        };
        assert_eq!(
            run(&swapped, &m).unwrap().data,
            vec![2., 3., 0., 1., 0., 1.]
        );
    }

    #[test]
    fn bad_derivations_are_errors() {
        let m = Mem::new(&[("a", vec![3, 2]), ("b", vec![1, 3]), ("s", vec![])]);
        let err = |src: WeightSource| match run(&src, &m) {
            Err(CheckpointError::Derive { weight, source, .. }) => {
                assert_eq!(weight, "w");
                source
            }
            other => panic!("expected a derive error, got {other:?}"),
        };
        assert_eq!(
            err(t("a").rows(2, 2)),
            DeriveError::RowsOutOfRange {
                start: 2,
                len: 2,
                rows: 3
            }
        );
        assert!(matches!(
            err(t("a").rows(usize::MAX, 2)),
            DeriveError::RowsOutOfRange { .. }
        ));
        assert_eq!(
            err(t("a").swap_halves()),
            DeriveError::OddHalves { rows: 3 }
        );
        assert_eq!(err(t("s").rows(0, 1)), DeriveError::NoRows);
        assert_eq!(err(t("s").swap_halves()), DeriveError::NoRows);
        assert_eq!(
            err(WeightSource::Concat { parts: vec![] }),
            DeriveError::EmptyConcat
        );
        assert!(matches!(
            err(WeightSource::Concat {
                parts: vec![t("a"), t("b")]
            }),
            DeriveError::ConcatMismatch { .. }
        ));
        assert_eq!(
            err(WeightSource::Concat {
                parts: vec![t("s")]
            }),
            DeriveError::NoRows
        );
    }

    #[test]
    fn reshape_keeps_the_elements() {
        let m = Mem::new(&[("a", vec![2, 3])]);
        let src = WeightSource::Reshape {
            of: Box::new(t("a")),
            shape: vec![3, 2],
        };
        let out = run(&src, &m).unwrap();
        assert_eq!(out.shape, vec![3, 2]);
        assert_eq!(out.data, vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(run(&src.rows(1, 1), &m).unwrap().data, vec![2., 3.]);
        let bad = WeightSource::Reshape {
            of: Box::new(t("a")),
            shape: vec![4],
        };
        assert!(matches!(
            run(&bad, &m),
            Err(CheckpointError::Derive {
                source: DeriveError::ReshapeCount { .. },
                ..
            })
        ));
    }

    /// A conv weight `[Cout, Cin, KH, KW]` permuted to `[Cout, KH, KW, Cin]`
    /// and flattened, as im2col GEMMs take it.
    #[test]
    fn permute_moves_axes() {
        let (cout, cin, kh, kw) = (2, 3, 2, 2);
        let m = Mem::new(&[("w", vec![cout, cin, kh, kw])]);
        let permuted = WeightSource::Permute {
            of: Box::new(t("w")),
            perm: vec![0, 2, 3, 1],
        };
        let src = WeightSource::Reshape {
            of: Box::new(permuted.clone()),
            shape: vec![cout, kh * kw * cin],
        };
        let out = run(&src, &m).unwrap();
        assert_eq!(out.shape, vec![cout, kh * kw * cin]);
        for o in 0..cout {
            for ky in 0..kh {
                for kx in 0..kw {
                    for c in 0..cin {
                        let column = (ky * kw + kx) * cin + c;
                        let stored = ((o * cin + c) * kh + ky) * kw + kx;
                        assert_eq!(out.data[o * kh * kw * cin + column], stored as f32);
                    }
                }
            }
        }
        // A window of rows of the permuted tensor.
        let row = run(&permuted.clone().rows(1, 1), &m).unwrap();
        assert_eq!(row.shape, vec![1, kh, kw, cin]);
        assert_eq!(row.data[..], out.data[kh * kw * cin..]);
        // A 2-D transpose.
        let m2 = Mem::new(&[("a", vec![2, 3])]);
        let transposed = WeightSource::Permute {
            of: Box::new(t("a")),
            perm: vec![1, 0],
        };
        assert_eq!(
            run(&transposed, &m2).unwrap().data,
            vec![0., 3., 1., 4., 2., 5.]
        );
        for bad in [vec![0, 0], vec![0], vec![0, 2]] {
            let src = WeightSource::Permute {
                of: Box::new(t("a")),
                perm: bad,
            };
            assert!(matches!(
                run(&src, &m2),
                Err(CheckpointError::Derive {
                    source: DeriveError::BadPermutation { rank: 2, .. },
                    ..
                })
            ));
        }
    }

    #[test]
    fn fp8_values_and_scales() {
        // Rows [0, 1, 2, 3] and [4, 5, 6, 7].
        let m = Mem::new(&[("a", vec![2, 4])]);
        let scale = |per_row| WeightSource::Fp8Scale {
            of: Box::new(t("a")),
            format: Fp8Format::E4m3,
            per_row,
        };
        let quant = |per_row| WeightSource::Fp8Quantize {
            of: Box::new(t("a")),
            format: Fp8Format::E4m3,
            per_row,
        };
        let per_tensor = run(&scale(false), &m).unwrap();
        assert_eq!(per_tensor.shape, vec![1]);
        assert_eq!(per_tensor.data, vec![7.0 / 448.0]);
        let per_row = run(&scale(true), &m).unwrap();
        assert_eq!(per_row.shape, vec![2, 1]);
        assert_eq!(per_row.data, vec![3.0 / 448.0, 7.0 / 448.0]);

        let q = run(&quant(true), &m).unwrap();
        assert_eq!(q.shape, vec![2, 4]);
        // Each row's largest element maps to 448.
        assert_eq!(q.data[3], 448.0);
        assert_eq!(q.data[7], 448.0);
        for (i, &v) in q.data.iter().enumerate() {
            let s = per_row.data[i / 4];
            assert_eq!(
                v,
                fp8::round(Fp8Format::E4m3, i as f32 * (1.0 / s)),
                "element {i}"
            );
        }
        let q = run(&quant(false), &m).unwrap();
        assert_eq!(q.data[7], 448.0);
        assert_eq!(
            q.data[1],
            fp8::round(Fp8Format::E4m3, 1.0 * (1.0 / (7.0 / 448.0)))
        );
        // All-zero sources get the floor scale, not a division by zero.
        let z = Mem(HashMap::from([(
            "z".to_string(),
            (vec![2], vec![0.0, 0.0]),
        )]));
        let s = run(
            &WeightSource::Fp8Scale {
                of: Box::new(t("z")),
                format: Fp8Format::E5m2,
                per_row: false,
            },
            &z,
        )
        .unwrap();
        assert_eq!(s.data, vec![1e-12 / 57344.0]);
    }

    #[test]
    fn describes_derivations() {
        let src = WeightSource::Concat {
            parts: vec![t("a").rows(0, 8), t("b").swap_halves()],
        };
        assert_eq!(
            describe(&src),
            "concat[rows 0..8 of `a`, halves swapped of `b`]"
        );
    }
}
