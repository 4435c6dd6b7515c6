//! NCHW ↔ NHWC for `fluxc run --nchw`.
//!
//! fluxc's image tensors (the VAE's latents and decoded image) are
//! channels-last, `[N, H, W, C]`; PyTorch, diffusers and the fixtures they
//! write keep images as `[N, C, H, W]`. `fluxc run --nchw` reads 4-D inputs
//! and writes 4-D outputs in PyTorch's layout, permuting on the way.

/// `shape` `[N, H, W, C]` as NCHW: `[N, C, H, W]`.
pub fn nchw_shape(nhwc: &[usize]) -> Vec<usize> {
    vec![nhwc[0], nhwc[3], nhwc[1], nhwc[2]]
}

/// The elements of an NCHW tensor of shape `[n, c, h, w]`, channels-last.
pub fn nchw_to_nhwc(nchw: &[usize], data: &[f32]) -> Vec<f32> {
    let [n, c, h, w] = [nchw[0], nchw[1], nchw[2], nchw[3]];
    let mut out = Vec::with_capacity(data.len());
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out.push(data[((b * c + ch) * h + y) * w + x]);
                }
            }
        }
    }
    out
}

/// The elements of an NHWC tensor of shape `[n, h, w, c]`, channels-first.
pub fn nhwc_to_nchw(nhwc: &[usize], data: &[f32]) -> Vec<f32> {
    let [n, h, w, c] = [nhwc[0], nhwc[1], nhwc[2], nhwc[3]];
    let mut out = Vec::with_capacity(data.len());
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out.push(data[((b * h + y) * w + x) * c + ch]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutes_there_and_back() {
        // [1, 2, 2, 3] NHWC with value = h·100 + w·10 + c.
        let nhwc = [1, 2, 2, 3];
        let data: Vec<f32> = (0..12)
            .map(|i| ((i / 6) * 100 + (i / 3 % 2) * 10 + i % 3) as f32)
            .collect();
        let nchw = nhwc_to_nchw(&nhwc, &data);
        assert_eq!(nchw_shape(&nhwc), vec![1, 3, 2, 2]);
        // Channel 1 first row: (h, w) = (0, 0), (0, 1).
        assert_eq!(&nchw[4..6], &[1.0, 11.0]);
        assert_eq!(nchw_to_nhwc(&nchw_shape(&nhwc), &nchw), data);
    }
}
