//! Element types of IR tensors.
//!
//! The IR records the dtype every tensor will have on the GPU. The CPU
//! interpreter computes in f32 whatever the dtype says, and applies a dtype's
//! rounding only where the graph converts to it (`Op::Cast`), so an f32 graph
//! is interpreted exactly and a bf16 graph approximately.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16: 8 exponent bits, 7 mantissa bits.
    BF16,
    /// IEEE binary16.
    F16,
    /// OCP fp8 E4M3 ("fn": no infinities, saturates at ±448).
    F8E4M3,
    /// OCP fp8 E5M2.
    F8E5M2,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer (position ids, token ids).
    I64,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I32,
        DType::I64,
    ];

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I64 => 8,
        }
    }

    /// The short name used in IR dumps and in model.toml (`bf16`, `f8e4m3`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32 | DType::I64)
    }

    /// True for the two 8-bit float dtypes.
    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }

    /// The largest finite value of a float dtype (`None` for integers).
    pub fn max_finite(self) -> Option<f32> {
        match self {
            DType::F32 => Some(f32::MAX),
            DType::BF16 => Some(half::bf16::MAX.to_f32()),
            DType::F16 => Some(65504.0),
            DType::F8E4M3 => Some(448.0),
            DType::F8E5M2 => Some(57344.0),
            DType::I32 | DType::I64 => None,
        }
    }

    /// Rounds an f32 value to the nearest value representable in this dtype
    /// (round-to-nearest-even; fp8 E4M3 saturates to ±448, E5M2 to ±57344;
    /// integers round half away from zero and saturate). `F32` is the identity.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::BF16 => half::bf16::from_f32(x).to_f32(),
            DType::F16 => half::f16::from_f32(x).to_f32(),
            DType::F8E4M3 => {
                if x.is_nan() {
                    return x;
                }
                float8::F8E4M3::from_f32(x.clamp(-448.0, 448.0)).to_f32()
            }
            DType::F8E5M2 => {
                if x.is_nan() {
                    return x;
                }
                float8::F8E5M2::from_f32(x.clamp(-57344.0, 57344.0)).to_f32()
            }
            DType::I32 => x.round().clamp(i32::MIN as f32, i32::MAX as f32),
            DType::I64 => x.round(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a dtype name that is not one of [`DType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{0}` (expected one of f32, bf16, f16, f8e4m3, f8e5m2, i32, i64)")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("float32".parse::<DType>().is_err());
    }

    #[test]
    fn bf16_rounding_keeps_8_significant_bits() {
        assert_eq!(DType::BF16.round(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1.
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::BF16.round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn e4m3_saturates_and_rounds() {
        assert_eq!(DType::F8E4M3.round(1000.0), 448.0);
        assert_eq!(DType::F8E4M3.round(-1000.0), -448.0);
        assert_eq!(DType::F8E4M3.round(f32::INFINITY), 448.0);
        // E4M3 has 3 mantissa bits: between 1 and 2 the step is 1/8.
        assert_eq!(DType::F8E4M3.round(1.06), 1.0);
        assert_eq!(DType::F8E4M3.round(1.07), 1.125);
        // Smallest subnormal is 2^-9.
        assert_eq!(DType::F8E4M3.round(2f32.powi(-9)), 2f32.powi(-9));
        assert_eq!(DType::F8E4M3.round(2f32.powi(-11)), 0.0);
        assert!(DType::F8E4M3.round(f32::NAN).is_nan());
    }

    #[test]
    fn e5m2_saturates() {
        assert_eq!(DType::F8E5M2.round(1e6), 57344.0);
        assert_eq!(DType::F8E5M2.round(1.1), 1.0);
    }
}
