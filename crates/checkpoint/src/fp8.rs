//! fp8 rounding on the host, as the IR defines it (`fluxc_ir::DType::round`):
//! round-to-nearest-even, saturating at the largest finite value (±448 for
//! E4M3, ±57344 for E5M2), NaN kept.

use fluxc_artifact::Fp8Format;

/// The largest finite value of `format`.
pub fn max_finite(format: Fp8Format) -> f32 {
    match format {
        Fp8Format::E4m3 => 448.0,
        Fp8Format::E5m2 => 57344.0,
    }
}

/// The bits of `x` in `format`: round-to-nearest-even, saturating, NaN kept.
pub fn encode(format: Fp8Format, x: f32) -> u8 {
    let max = max_finite(format);
    // `clamp` keeps NaN; the conversion maps it to the format's NaN.
    let x = x.clamp(-max, max);
    match format {
        Fp8Format::E4m3 => float8::F8E4M3::from_f32(x).to_bits(),
        Fp8Format::E5m2 => float8::F8E5M2::from_f32(x).to_bits(),
    }
}

/// The value of fp8 bits `bits` in `format`.
pub fn decode(format: Fp8Format, bits: u8) -> f32 {
    match format {
        Fp8Format::E4m3 => float8::F8E4M3::from_bits(bits).to_f32(),
        Fp8Format::E5m2 => float8::F8E5M2::from_bits(bits).to_f32(),
    }
}

/// `x` rounded to the nearest value of `format` (saturating, NaN kept).
pub fn round(format: Fp8Format, x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    decode(format, encode(format, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_bits() {
        let e = |x| encode(Fp8Format::E4m3, x);
        assert_eq!(e(1.0), 0x38);
        assert_eq!(e(-1.0), 0xb8);
        assert_eq!(e(0.0), 0x00);
        assert_eq!(e(448.0), 0x7e);
        assert_eq!(e(1.0e6), 0x7e, "saturates");
        assert_eq!(e(-1.0e6), 0xfe);
        assert_eq!(e(f32::INFINITY), 0x7e);
        assert_eq!(e(f32::NAN) & 0x7f, 0x7f);
        // 1.0625 is halfway between 1.0 (mantissa 000) and 1.125 (001): even wins.
        assert_eq!(e(1.0625), 0x38);
        // 1.1875 is halfway between 1.125 (001) and 1.25 (010): even wins.
        assert_eq!(e(1.1875), 0x3a);
        assert_eq!(e(2.0f32.powi(-9)), 0x01, "smallest subnormal");
    }

    #[test]
    fn e5m2_bits() {
        let e = |x| encode(Fp8Format::E5m2, x);
        assert_eq!(e(1.0), 0x3c);
        assert_eq!(e(-2.0), 0xc0);
        assert_eq!(e(57344.0), 0x7b);
        assert_eq!(e(1.0e9), 0x7b, "saturates");
        // 1.125 is halfway between 1.0 (00) and 1.25 (01): even wins.
        assert_eq!(e(1.125), 0x3c);
        assert_eq!(e(1.375), 0x3e);
    }

    #[test]
    fn round_matches_decode_of_encode() {
        assert_eq!(round(Fp8Format::E4m3, 500.0), 448.0);
        assert_eq!(round(Fp8Format::E4m3, -0.3), -0.3125);
        assert_eq!(round(Fp8Format::E5m2, 3.1), 3.0);
        assert!(round(Fp8Format::E4m3, f32::NAN).is_nan());
    }
}
