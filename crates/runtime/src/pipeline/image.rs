//! [`Image`]: what [`Pipeline::generate`](super::Pipeline::generate)
//! returns, and its conversion to 8-bit RGB as diffusers'
//! `VaeImageProcessor.postprocess(output_type="pil")` does it.

use fluxc_artifact::ElemType;

use crate::convert::{decode, encode};

/// The decoded images of one run, channels-last `[batch, height, width,
/// channels]` as the VAE writes them (values about -1 to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Images.
    pub batch: usize,
    /// Rows in pixels.
    pub height: usize,
    /// Columns in pixels.
    pub width: usize,
    /// Channels (3).
    pub channels: usize,
    /// The VAE's output dtype (the postprocessing rounds in it).
    pub dtype: ElemType,
    /// `batch·height·width·channels` values, channels-last.
    pub data: Vec<f32>,
}

impl Image {
    /// The values in PyTorch's NCHW layout.
    pub fn nchw(&self) -> Vec<f32> {
        let (h, w, c) = (self.height, self.width, self.channels);
        let mut out = Vec::with_capacity(self.data.len());
        for b in 0..self.batch {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out.push(self.data[((b * h + y) * w + x) * c + ch]);
                    }
                }
            }
        }
        out
    }

    /// Image `index` as interleaved 8-bit values (`height·width·channels`
    /// bytes, row-major), or `None` past the batch: `(x / 2 + 0.5).clamp(0,
    /// 1)` with each operation rounded to the VAE's dtype (as PyTorch does
    /// on a tensor of that dtype), then `round(v · 255)` in f32, ties to
    /// even (numpy's `round`), as `numpy_to_pil` does.
    pub fn to_u8(&self, index: usize) -> Option<Vec<u8>> {
        if index >= self.batch {
            return None;
        }
        let n = self.height * self.width * self.channels;
        let image = self.data.get(index * n..(index + 1) * n)?;
        let round = |v: Vec<f32>| decode(self.dtype, &encode(self.dtype, &v));
        let half = round(image.iter().map(|&v| v * 0.5).collect());
        let shifted = round(half.iter().map(|&v| v + 0.5).collect());
        Some(
            shifted
                .iter()
                .map(|&v| {
                    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
                    (v * 255.0).round_ties_even() as u8
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_like_diffusers_postprocess() {
        let image = Image {
            batch: 1,
            height: 1,
            width: 2,
            channels: 3,
            dtype: ElemType::F32,
            data: vec![-1.0, 0.0, 1.0, 2.0, -3.0, f32::NAN],
        };
        assert_eq!(image.to_u8(0).unwrap(), vec![0, 128, 255, 255, 0, 0]);
        assert_eq!(image.to_u8(1), None);
        let plain = Image {
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ..image.clone()
        };
        assert_eq!(plain.nchw(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        // bf16: 0.5·x + 0.5 rounds to bf16 before scaling.
        let bf = Image {
            dtype: ElemType::Bf16,
            data: vec![0.01; 6],
            ..image
        };
        // 0.505 rounds to 0.50390625 in bf16; · 255 = 128.496 → 128.
        assert_eq!(bf.to_u8(0).unwrap(), vec![128; 6]);
    }
}
