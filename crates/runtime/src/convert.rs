//! Host conversions between f32 and the element types of buffers.
//!
//! Encoding rounds to nearest, ties to even (bf16 and f16 through `half`,
//! fp8 through `fluxc_checkpoint::fp8`, which saturates at ±448 for E4M3 and
//! ±57344 for E5M2, as the IR does); integers round half away from zero and
//! saturate (NaN becomes 0). Bytes are little-endian, as on the GPU. Large
//! arrays are converted on several threads.

use fluxc_artifact::{ElemType, Fp8Format};
use fluxc_checkpoint::fp8;

/// Elements above which [`encode`] splits the work across threads.
const PARALLEL_ELEMENTS: usize = 1 << 20;

/// `values` as little-endian elements of `dtype`.
pub fn encode(dtype: ElemType, values: &[f32]) -> Vec<u8> {
    let size = dtype.size_bytes() as usize;
    let mut out = vec![0u8; values.len() * size];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);
    if values.len() < PARALLEL_ELEMENTS || threads < 2 {
        encode_into(dtype, values, &mut out);
        return out;
    }
    let chunk = values.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (vals, bytes) in values.chunks(chunk).zip(out.chunks_mut(chunk * size)) {
            s.spawn(move || encode_into(dtype, vals, bytes));
        }
    });
    out
}

/// Writes `values` as elements of `dtype` into `out` (`values.len() ×
/// size` bytes).
fn encode_into(dtype: ElemType, values: &[f32], out: &mut [u8]) {
    match dtype {
        ElemType::F32 => put(values, out, |v| v.to_le_bytes()),
        ElemType::Bf16 => put(values, out, |v| {
            half::bf16::from_f32(v).to_bits().to_le_bytes()
        }),
        ElemType::F16 => put(values, out, |v| {
            half::f16::from_f32(v).to_bits().to_le_bytes()
        }),
        ElemType::F8e4m3 => put(values, out, |v| [fp8::encode(Fp8Format::E4m3, v)]),
        ElemType::F8e5m2 => put(values, out, |v| [fp8::encode(Fp8Format::E5m2, v)]),
        // `as` saturates and maps NaN to 0.
        ElemType::I32 => put(values, out, |v| (v.round() as i32).to_le_bytes()),
        ElemType::I64 => put(values, out, |v| (v.round() as i64).to_le_bytes()),
    }
}

fn put<const N: usize>(values: &[f32], out: &mut [u8], f: impl Fn(f32) -> [u8; N]) {
    for (v, dst) in values.iter().zip(out.chunks_exact_mut(N)) {
        dst.copy_from_slice(&f(*v));
    }
}

/// Little-endian elements of `dtype` as f32 (a trailing partial element is
/// ignored).
pub fn decode(dtype: ElemType, bytes: &[u8]) -> Vec<f32> {
    fn get<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("N bytes")))
            .collect()
    }
    match dtype {
        ElemType::F32 => get(bytes, f32::from_le_bytes),
        ElemType::Bf16 => get(bytes, |b| {
            half::bf16::from_bits(u16::from_le_bytes(b)).to_f32()
        }),
        ElemType::F16 => get(bytes, |b| {
            half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
        }),
        ElemType::F8e4m3 => get(bytes, |[b]| fp8::decode(Fp8Format::E4m3, b)),
        ElemType::F8e5m2 => get(bytes, |[b]| fp8::decode(Fp8Format::E5m2, b)),
        ElemType::I32 => get(bytes, |b| i32::from_le_bytes(b) as f32),
        ElemType::I64 => get(bytes, |b| i64::from_le_bytes(b) as f32),
    }
}

/// Whether checkpoint tensors stored as `stored` can be copied into a
/// buffer of `dtype` byte for byte.
pub(crate) fn same_encoding(stored: fluxc_checkpoint::Dtype, dtype: ElemType) -> bool {
    use fluxc_checkpoint::Dtype;
    matches!(
        (stored, dtype),
        (Dtype::F32, ElemType::F32)
            | (Dtype::BF16, ElemType::Bf16)
            | (Dtype::F16, ElemType::F16)
            | (Dtype::F8_E4M3, ElemType::F8e4m3)
            | (Dtype::F8_E5M2, ElemType::F8e5m2)
            | (Dtype::I32, ElemType::I32)
            | (Dtype::I64, ElemType::I64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words16(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn bf16_bit_patterns() {
        let vals = [
            1.0f32,
            -2.0,
            0.0,
            1.0 + 2f32.powi(-8), // halfway between 1.0 and the next: even (down)
            1.0 + 3.0 * 2f32.powi(-8), // halfway: even (up)
            3.0e38,
        ];
        let bits = words16(&encode(ElemType::Bf16, &vals));
        assert_eq!(bits, vec![0x3f80, 0xc000, 0x0000, 0x3f80, 0x3f82, 0x7f62]);
        let back = decode(ElemType::Bf16, &encode(ElemType::Bf16, &[1.5, -0.25]));
        assert_eq!(back, vec![1.5, -0.25]);
    }

    #[test]
    fn f16_and_f32_bit_patterns() {
        assert_eq!(
            words16(&encode(ElemType::F16, &[1.0, -2.0, 65504.0, 1.0e6])),
            vec![0x3c00, 0xc000, 0x7bff, 0x7c00]
        );
        assert_eq!(encode(ElemType::F32, &[1.0]), vec![0x00, 0x00, 0x80, 0x3f]);
    }

    #[test]
    fn fp8_bit_patterns() {
        assert_eq!(
            encode(
                ElemType::F8e4m3,
                &[1.0, -1.0, 448.0, 1000.0, -1000.0, 0.0625]
            ),
            vec![0x38, 0xb8, 0x7e, 0x7e, 0xfe, 0x18]
        );
        assert_eq!(
            encode(ElemType::F8e5m2, &[1.0, 57344.0, 1.0e6, 1.125]),
            vec![0x3c, 0x7b, 0x7b, 0x3c]
        );
        assert_eq!(
            decode(ElemType::F8e4m3, &[0x38, 0x7e, 0xfe]),
            vec![1.0, 448.0, -448.0]
        );
    }

    #[test]
    fn integers_round_and_saturate() {
        let bytes = encode(ElemType::I32, &[1.5, -1.5, 2.4, f32::NAN, 1e20]);
        assert_eq!(
            decode(ElemType::I32, &bytes),
            vec![2.0, -2.0, 2.0, 0.0, i32::MAX as f32]
        );
        assert_eq!(
            decode(ElemType::I64, &encode(ElemType::I64, &[-7.0])),
            vec![-7.0]
        );
    }

    #[test]
    fn parallel_encoding_matches_serial() {
        let n = PARALLEL_ELEMENTS * 2 + 3;
        let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for dtype in [ElemType::Bf16, ElemType::F32, ElemType::F8e4m3] {
            let mut serial = vec![0u8; n * dtype.size_bytes() as usize];
            encode_into(dtype, &vals, &mut serial);
            assert_eq!(encode(dtype, &vals), serial, "{dtype:?}");
        }
    }
}
