//! CUDA tensor maps (`CUtensorMap`) for the attention kernel's TMA loads.
//!
//! The tensor-core attention kernel takes q, k and v as tensor maps
//! ([`fluxc_artifact::AttentionOperands::TensorMaps`]): 128-byte descriptors
//! the driver encodes on the host and the kernel receives by value. This
//! module keeps the two halves apart so the host half is testable without a
//! GPU: [`TensorMapSpec`] is the plain description of an operand's view
//! (built and checked in `plan`), [`encode`] hands it to the driver.

use std::ffi::c_void;

use cudarc::driver::sys;

/// A bf16 tensor map with the 128-byte swizzle and zero fill out of bounds,
/// described by plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorMapSpec {
    /// Device address of element 0.
    pub address: u64,
    /// Extents, innermost dimension first.
    pub dims: [u64; 4],
    /// Byte strides of dimensions 1, 2 and 3 (dimension 0 is contiguous).
    pub strides: [u64; 3],
    /// The box one TMA copy moves, innermost first.
    pub box_dims: [u32; 4],
}

impl TensorMapSpec {
    /// An attention operand: contiguous bf16 `[batch, seq, heads, head_dim]`
    /// at `address`, seen as `[head_dim, heads, seq, batch]` and loaded in
    /// boxes of 64 elements of the head dimension (128 bytes, one 128-byte
    /// swizzle row), one head, `rows` rows of the sequence (the kernel's
    /// tile) and one batch. An empty sequence is described as one row: the
    /// kernel never loads it, and the driver refuses zero extents.
    pub(crate) fn attention_operand(
        address: u64,
        batch: u32,
        seq: u32,
        heads: u32,
        head_dim: u32,
        rows: u32,
    ) -> Self {
        let (batch, seq, heads, d) = (
            u64::from(batch.max(1)),
            u64::from(seq.max(1)),
            u64::from(heads),
            u64::from(head_dim),
        );
        TensorMapSpec {
            address,
            dims: [d, heads, seq, batch],
            strides: [2 * d, 2 * d * heads, 2 * d * heads * seq],
            box_dims: [64, 1, rows, 1],
        }
    }

    /// What the driver requires of a tiled bf16 map with the 128-byte
    /// swizzle, checked here so a bad operand is an error that says why.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.address % 16 != 0 {
            return Err(format!(
                "tensor map address {:#x} is not 16-byte aligned",
                self.address
            ));
        }
        if let Some(s) = self
            .strides
            .iter()
            .find(|s| **s % 16 != 0 || **s >= 1 << 40)
        {
            return Err(format!(
                "tensor map stride {s} bytes is not a multiple of 16 below 2^40"
            ));
        }
        if let Some(d) = self.dims.iter().find(|d| **d == 0 || **d > 1 << 32) {
            return Err(format!("tensor map extent {d} is outside 1..=2^32"));
        }
        if self.box_dims.iter().any(|b| *b == 0 || *b > 256) {
            return Err(format!(
                "tensor map box {:?} has a side outside 1..=256",
                self.box_dims
            ));
        }
        // The 128-byte swizzle needs the inner box side to span at most
        // 128 bytes.
        if u64::from(self.box_dims[0]) * 2 > 128 {
            return Err(format!(
                "tensor map inner box of {} bf16 exceeds the 128-byte swizzle span",
                self.box_dims[0]
            ));
        }
        Ok(())
    }
}

/// An encoded `CUtensorMap`: 128 opaque bytes, passed to a kernel by value.
#[repr(C, align(128))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorMap(pub [u64; 16]);

/// Encodes `spec` with the driver (`cuTensorMapEncodeTiled`). Needs a loaded
/// driver, i.e. an engine on a GPU.
pub(crate) fn encode(spec: &TensorMapSpec) -> Result<TensorMap, String> {
    spec.check()?;
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let element_strides = [1u32; 4];
    // SAFETY: every pointer addresses a live local array of the length the
    // rank (4) implies (3 for the strides); `map` is the driver's own,
    // suitably aligned, type; the global address is only recorded, not read.
    let result = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            4,
            spec.address as *mut c_void,
            spec.dims.as_ptr(),
            spec.strides.as_ptr(),
            spec.box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    result
        .result()
        .map_err(|e| format!("cuTensorMapEncodeTiled of {spec:?} failed: {e:?}"))?;
    Ok(TensorMap(map.opaque))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_operands_are_seen_head_dim_first() {
        let s = TensorMapSpec::attention_operand(0x1000, 2, 4608, 24, 128, 192);
        assert_eq!(s.dims, [128, 24, 4608, 2]);
        assert_eq!(s.strides, [256, 256 * 24, 256 * 24 * 4608]);
        assert_eq!(s.box_dims, [64, 1, 192, 1]);
        assert!(s.check().is_ok());
        // Empty sequences become one (never loaded) row.
        assert_eq!(
            TensorMapSpec::attention_operand(0x1000, 1, 0, 2, 64, 128).dims,
            [64, 2, 1, 1]
        );
    }

    #[test]
    fn what_the_driver_refuses_is_an_error() {
        let good = TensorMapSpec::attention_operand(0x1000, 1, 19, 3, 64, 128);
        assert!(good.check().is_ok());
        let misaligned = TensorMapSpec {
            address: 0x1008,
            ..good
        };
        assert!(misaligned.check().unwrap_err().contains("16-byte aligned"));
        let odd_heads = TensorMapSpec::attention_operand(0x1000, 1, 19, 3, 4, 128);
        assert!(odd_heads.check().unwrap_err().contains("stride"));
        let wide_box = TensorMapSpec {
            box_dims: [128, 1, 128, 1],
            ..good
        };
        assert!(wide_box.check().unwrap_err().contains("swizzle"));
    }
}
