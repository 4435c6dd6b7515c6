//! The host mirror of the initial noise `kernels/pipeline.cu` draws: the
//! same Philox-4x32-10 words and the same Box-Muller transform, in Rust's
//! f32 arithmetic. The words are bit-exact; `ln`, `sqrt` and the sine and
//! cosine may differ from CUDA's in the last bits, so GPU and host samples
//! agree to about 1e-6, not bit for bit. Tests use it to check the kernel
//! draws the documented stream.

/// Philox-4x32-10 of `counter` under `key` (Salmon et al., SC'11; the
/// generator of Random123 and cuRAND's Philox).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The standard normal sample of element `index` (its NCHW index in the
/// unpacked latents) for `seed`, as `fluxc_pipe_init_*` draws it.
pub fn gaussian(seed: u64, index: u64) -> f32 {
    let group = index >> 2;
    let r = philox4x32_10(
        [group as u32, (group >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    let lane = (index & 3) as usize;
    let (a, b) = if lane < 2 { (r[0], r[1]) } else { (r[2], r[3]) };
    let scale = 1.0f32 / 16_777_216.0;
    let u1 = ((a >> 8) as f32 + 1.0) * scale;
    let u2 = (b >> 8) as f32 * scale;
    let radius = (-2.0 * u1.ln()).sqrt();
    let angle = std::f32::consts::PI * (2.0 * u2);
    radius
        * if lane & 1 == 1 {
            angle.sin()
        } else {
            angle.cos()
        }
}

/// The noise of `elements` unpacked latents `[B, C, H, W]` (row-major,
/// before packing) for `seed`.
pub fn noise(seed: u64, elements: usize) -> Vec<f32> {
    (0..elements as u64).map(|i| gaussian(seed, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answers() {
        // Random123's kat_vectors, philox4x32 with 10 rounds.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn noise_is_standard_normal_and_seeded() {
        let a = noise(42, 1 << 16);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.02, "std {}", var.sqrt());
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(a, noise(42, 1 << 16));
        assert_ne!(a[..8], noise(43, 8)[..]);
    }
}
