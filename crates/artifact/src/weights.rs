//! How graph weights are derived from checkpoint tensors at load time.

use serde::{Deserialize, Serialize};

/// How one weight the graph needs is obtained from the tensors stored in a
/// checkpoint. Checkpoint layouts differ (the original BFL FLUX file stores
/// q, k and v as one fused `qkv` tensor, diffusers stores them apart), and
/// passes fuse weights further; rather than copying weights at compile time,
/// the compiler records the derivation and the loader applies it.
///
/// All derivations but [`WeightSource::Permute`] act on the outermost
/// dimension (dim 0, the output-feature axis of a linear weight or a bias);
/// `Permute` rearranges the axes of a whole tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightSource {
    /// A stored tensor, used as is.
    Tensor {
        /// Name in the checkpoint.
        name: String,
    },
    /// Rows `start..start + len` of another source.
    Rows {
        /// The source sliced.
        of: Box<WeightSource>,
        /// First row kept.
        start: usize,
        /// Number of rows kept.
        len: usize,
    },
    /// Another source with its two dim-0 halves swapped (BFL stores the final
    /// modulation as shift, scale; diffusers as scale, shift).
    SwapHalves {
        /// The source whose halves are swapped.
        of: Box<WeightSource>,
    },
    /// Several sources stacked along dim 0.
    Concat {
        /// The stacked parts, in order.
        parts: Vec<WeightSource>,
    },
    /// Another source with a new shape (same elements, same order).
    Reshape {
        /// The source reshaped.
        of: Box<WeightSource>,
        /// The new shape.
        shape: Vec<usize>,
    },
    /// Another source with its axes permuted: axis `i` of the result is axis
    /// `perm[i]` of `of` (a conv weight `[Cout, Cin, KH, KW]` becomes the
    /// `[Cout, KH, KW, Cin]` an im2col GEMM multiplies with `perm = [0, 2,
    /// 3, 1]`).
    Permute {
        /// The source permuted.
        of: Box<WeightSource>,
        /// For each axis of the result, the axis of `of` it takes.
        perm: Vec<usize>,
    },
    /// The fp8 values of another source: `round(of / scale)`, saturating,
    /// with the scale of [`WeightSource::Fp8Scale`] for the same `of`,
    /// `format` and `per_row`.
    Fp8Quantize {
        /// The source quantized.
        of: Box<WeightSource>,
        /// The fp8 format.
        format: Fp8Format,
        /// One scale per row (output channel) instead of one per tensor.
        per_row: bool,
    },
    /// The f32 quantization scales of another source:
    /// `max(amax, 1e-12) / max_finite(format)`, shape `[1]` or `[rows, 1]`.
    Fp8Scale {
        /// The source whose scale this is.
        of: Box<WeightSource>,
        /// The fp8 format.
        format: Fp8Format,
        /// One scale per row (output channel) instead of one per tensor.
        per_row: bool,
    },
}

/// The 8-bit float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fp8Format {
    /// 4 exponent bits, 3 mantissa bits, saturating at ±448.
    E4m3,
    /// 5 exponent bits, 2 mantissa bits, saturating at ±57344.
    E5m2,
}

impl WeightSource {
    /// A stored tensor.
    pub fn tensor(name: impl Into<String>) -> Self {
        WeightSource::Tensor { name: name.into() }
    }

    /// Rows `start..start + len` of `self`.
    pub fn rows(self, start: usize, len: usize) -> Self {
        WeightSource::Rows {
            of: Box::new(self),
            start,
            len,
        }
    }

    /// `self` with its halves swapped.
    pub fn swap_halves(self) -> Self {
        WeightSource::SwapHalves { of: Box::new(self) }
    }

    /// The names of the stored tensors this source reads, in order of first use.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.collect_names(&mut names);
        names
    }

    fn collect_names<'a>(&'a self, names: &mut Vec<&'a str>) {
        match self {
            WeightSource::Tensor { name } => {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
            WeightSource::Rows { of, .. }
            | WeightSource::SwapHalves { of }
            | WeightSource::Reshape { of, .. }
            | WeightSource::Permute { of, .. }
            | WeightSource::Fp8Quantize { of, .. }
            | WeightSource::Fp8Scale { of, .. } => of.collect_names(names),
            WeightSource::Concat { parts } => {
                for p in parts {
                    p.collect_names(names);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_a_kind_tag() {
        let s = WeightSource::tensor("double_blocks.0.img_attn.qkv.weight").rows(64, 32);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"rows","of":{"kind":"tensor","name":"double_blocks.0.img_attn.qkv.weight"},"start":64,"len":32}"#
        );
        assert_eq!(serde_json::from_str::<WeightSource>(&json).unwrap(), s);
    }

    #[test]
    fn lists_tensor_names_once() {
        let s = WeightSource::Concat {
            parts: vec![
                WeightSource::tensor("a").rows(0, 2),
                WeightSource::tensor("b").swap_halves(),
                WeightSource::tensor("a").rows(2, 2),
            ],
        };
        assert_eq!(s.tensor_names(), vec!["a", "b"]);
    }
}
