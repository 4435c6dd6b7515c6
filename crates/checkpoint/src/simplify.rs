//! Simplification of composed weight derivations.
//!
//! Composing a pass's derivation with a checkpoint layout can undo a split:
//! q/k/v fusion stacks `to_q`, `to_k`, `to_v`, which in a BFL file are rows
//! of one fused `qkv` tensor, so the fused weight is "rows 0..n, n..2n and
//! 2n..3n of qkv, stacked" — which is one slice, rows 0..3n of `qkv` (all of
//! it). Merging consecutive row slices of one source lets the loader read
//! such a weight as one contiguous range instead of assembling it.

use fluxc_artifact::WeightSource;

/// `source` with consecutive row slices of one source merged.
pub fn simplify(source: WeightSource) -> WeightSource {
    match source {
        WeightSource::Concat { parts } => {
            let mut merged: Vec<WeightSource> = Vec::new();
            for part in parts.into_iter().map(simplify) {
                if let Some(joined) = merged.last().and_then(|last| join_rows(last, &part)) {
                    *merged.last_mut().expect("not empty") = joined;
                } else {
                    merged.push(part);
                }
            }
            if merged.len() == 1 {
                merged.pop().expect("one part")
            } else {
                WeightSource::Concat { parts: merged }
            }
        }
        WeightSource::Rows { of, start, len } => WeightSource::Rows {
            of: Box::new(simplify(*of)),
            start,
            len,
        },
        WeightSource::SwapHalves { of } => WeightSource::SwapHalves {
            of: Box::new(simplify(*of)),
        },
        WeightSource::Reshape { of, shape } => WeightSource::Reshape {
            of: Box::new(simplify(*of)),
            shape,
        },
        WeightSource::Permute { of, perm } => WeightSource::Permute {
            of: Box::new(simplify(*of)),
            perm,
        },
        WeightSource::Fp8Quantize {
            of,
            format,
            per_row,
        } => WeightSource::Fp8Quantize {
            of: Box::new(simplify(*of)),
            format,
            per_row,
        },
        WeightSource::Fp8Scale {
            of,
            format,
            per_row,
        } => WeightSource::Fp8Scale {
            of: Box::new(simplify(*of)),
            format,
            per_row,
        },
        tensor @ WeightSource::Tensor { .. } => tensor,
    }
}

/// `a` then `b` as one row slice, when both slice the same source and `b`
/// starts where `a` ends.
fn join_rows(a: &WeightSource, b: &WeightSource) -> Option<WeightSource> {
    match (a, b) {
        (
            WeightSource::Rows {
                of: of_a,
                start: start_a,
                len: len_a,
            },
            WeightSource::Rows {
                of: of_b,
                start: start_b,
                len: len_b,
            },
        ) if of_a == of_b && start_a + len_a == *start_b => Some(WeightSource::Rows {
            of: of_a.clone(),
            start: *start_a,
            len: len_a + len_b,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restacked_thirds_of_qkv_become_one_slice() {
        let qkv = WeightSource::tensor("double_blocks.0.img_attn.qkv.weight");
        let fused = WeightSource::Concat {
            parts: vec![
                qkv.clone().rows(0, 4),
                qkv.clone().rows(4, 4),
                qkv.clone().rows(8, 4),
            ],
        };
        assert_eq!(simplify(fused), qkv.rows(0, 12));
    }

    #[test]
    fn other_stacks_are_kept() {
        let a = WeightSource::tensor("a");
        let b = WeightSource::tensor("b");
        let s = WeightSource::Concat {
            parts: vec![a.clone().rows(0, 2), b.clone(), a.clone().rows(2, 2)],
        };
        assert_eq!(simplify(s.clone()), s);
    }
}
