//! CUDA tensor maps (`CUtensorMap`) for the attention kernels' TMA loads.
//!
//! The tensor-core attention kernels take q, k and v as tensor maps
//! ([`fluxc_artifact::AttentionOperands::TensorMaps`] for bf16,
//! [`fluxc_artifact::AttentionOperands::Fp8TensorMaps`] for fp8 e4m3, whose
//! bytes are mapped as `UINT8`): 128-byte descriptors the driver encodes on
//! the host and the kernel receives by value. This module keeps the two
//! halves apart so the host half is testable without a GPU:
//! [`TensorMapSpec`] is the plain description of an operand's view (built
//! and checked in `plan`), [`encode`] hands it to the driver.

use std::ffi::c_void;

use cudarc::driver::sys;

/// The element type of a tensor map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapElement {
    /// bfloat16 (`CU_TENSOR_MAP_DATA_TYPE_BFLOAT16`).
    Bf16,
    /// One byte: fp8 e4m3 values, which TMA moves as `UINT8`.
    U8,
}

impl MapElement {
    /// Bytes per element.
    pub(crate) fn bytes(self) -> u64 {
        match self {
            MapElement::Bf16 => 2,
            MapElement::U8 => 1,
        }
    }

    /// Its name in errors.
    fn name(self) -> &'static str {
        match self {
            MapElement::Bf16 => "bf16",
            MapElement::U8 => "u8",
        }
    }

    fn driver_type(self) -> sys::CUtensorMapDataType {
        match self {
            MapElement::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            MapElement::U8 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        }
    }
}

/// A 4-D tensor map with the 128-byte swizzle and zero fill out of bounds,
/// described by plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorMapSpec {
    /// Device address of element 0.
    pub address: u64,
    /// The element type.
    pub element: MapElement,
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
        let shape = [batch, seq, heads, head_dim];
        Self::sequence_operand(address, MapElement::Bf16, shape, [64, rows])
    }

    /// An fp8 attention operand (q or k): contiguous e4m3
    /// `[batch, seq, heads, head_dim]` at `address`, seen as bytes
    /// `[head_dim, heads, seq, batch]` and loaded in boxes of the whole head
    /// (128 bytes at head width 128, one swizzle row), one head, `rows`
    /// rows of the sequence and one batch. An empty sequence is one row, as
    /// in [`TensorMapSpec::attention_operand`].
    pub(crate) fn fp8_attention_operand(
        address: u64,
        batch: u32,
        seq: u32,
        heads: u32,
        head_dim: u32,
        rows: u32,
    ) -> Self {
        let shape = [batch, seq, heads, head_dim];
        Self::sequence_operand(address, MapElement::U8, shape, [head_dim, rows])
    }

    /// Contiguous `[batch, seq, heads, head_dim]` of `element`s at `address`
    /// as the view `[head_dim, heads, seq, batch]`, in boxes of
    /// `[inner, 1, rows, 1]`; an empty sequence as one row.
    fn sequence_operand(
        address: u64,
        element: MapElement,
        [batch, seq, heads, head_dim]: [u32; 4],
        [inner, rows]: [u32; 2],
    ) -> Self {
        let (batch, seq, heads, d) = (
            u64::from(batch.max(1)),
            u64::from(seq.max(1)),
            u64::from(heads),
            u64::from(head_dim),
        );
        let e = element.bytes();
        TensorMapSpec {
            address,
            element,
            dims: [d, heads, seq, batch],
            strides: [e * d, e * d * heads, e * d * heads * seq],
            box_dims: [inner, 1, rows, 1],
        }
    }

    /// fp8 attention's key-innermost copy of v: bytes `[batch, heads,
    /// head_dim, keys]` at `address` (`keys` = the padded key count), seen
    /// as `[keys, head_dim, heads, batch]` and loaded in boxes of `rows`
    /// keys by the whole head width for one head and batch. No keys is
    /// described as 16 (never loaded; the driver refuses zero extents).
    pub(crate) fn fp8_values_transposed(
        address: u64,
        batch: u32,
        heads: u32,
        head_dim: u32,
        keys: u32,
        rows: u32,
    ) -> Self {
        let (batch, heads, d, keys) = (
            u64::from(batch.max(1)),
            u64::from(heads),
            u64::from(head_dim),
            u64::from(keys.max(16)),
        );
        TensorMapSpec {
            address,
            element: MapElement::U8,
            dims: [keys, d, heads, batch],
            strides: [keys, keys * d, keys * d * heads],
            box_dims: [rows, head_dim, 1, 1],
        }
    }

    /// What the driver requires of a tiled map with the 128-byte swizzle,
    /// checked here so a bad operand is an error that says why.
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
        // The inner box side must be a multiple of 16 bytes, and the
        // 128-byte swizzle needs it to span at most 128 bytes.
        let inner = u64::from(self.box_dims[0]) * self.element.bytes();
        if inner % 16 != 0 {
            return Err(format!(
                "tensor map inner box of {} {} ({inner} bytes) is not a multiple of 16 bytes",
                self.box_dims[0],
                self.element.name()
            ));
        }
        if inner > 128 {
            return Err(format!(
                "tensor map inner box of {} {} exceeds the 128-byte swizzle span",
                self.box_dims[0],
                self.element.name()
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
            spec.element.driver_type(),
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
    fn fp8_operands_are_bytes_with_whole_head_boxes() {
        // q of FLUX at 1024²: 4608 tokens, 24 heads of 128 e4m3.
        let q = TensorMapSpec::fp8_attention_operand(0x1000, 2, 4608, 24, 128, 128);
        assert_eq!(q.element, MapElement::U8);
        assert_eq!(q.dims, [128, 24, 4608, 2]);
        assert_eq!(q.strides, [128, 128 * 24, 128 * 24 * 4608]);
        assert_eq!(q.box_dims, [128, 1, 128, 1]);
        assert!(q.check().is_ok());
        // vt: 333 keys padded to 336, boxes of 128 keys × the head.
        let vt = TensorMapSpec::fp8_values_transposed(0x2000, 1, 2, 128, 336, 128);
        assert_eq!(vt.dims, [336, 128, 2, 1]);
        assert_eq!(vt.strides, [336, 336 * 128, 336 * 128 * 2]);
        assert_eq!(vt.box_dims, [128, 128, 1, 1]);
        assert!(vt.check().is_ok());
        // No keys: 16 (never loaded) for vt, one row for k.
        assert_eq!(
            TensorMapSpec::fp8_values_transposed(0x2000, 1, 2, 128, 0, 128).dims,
            [16, 128, 2, 1]
        );
        assert_eq!(
            TensorMapSpec::fp8_attention_operand(0x1000, 1, 0, 2, 128, 128).dims,
            [128, 2, 1, 1]
        );
    }

    #[test]
    fn fp8_maps_the_driver_refuses_are_errors() {
        // A key count that is not a multiple of 16 makes vt's rows strides
        // TMA cannot take.
        let odd = TensorMapSpec::fp8_values_transposed(0x2000, 1, 2, 128, 333, 128);
        assert!(odd.check().unwrap_err().contains("stride 333"), "{odd:?}");
        // 192-key boxes span 192 bytes: wider than the swizzle.
        let wide = TensorMapSpec::fp8_values_transposed(0x2000, 1, 2, 128, 336, 192);
        let e = wide.check().unwrap_err();
        assert!(e.contains("inner box of 192 u8 exceeds"), "{e}");
        // 24 keys (24 bytes) is not a multiple of 16 bytes.
        let ragged = TensorMapSpec::fp8_values_transposed(0x2000, 1, 2, 128, 336, 24);
        let e = ragged.check().unwrap_err();
        assert!(e.contains("(24 bytes) is not a multiple of 16"), "{e}");
        // A head of 64 bytes is fine; of 8 bytes it is not (the strides).
        assert!(
            TensorMapSpec::fp8_attention_operand(0x1000, 1, 9, 2, 64, 128)
                .check()
                .is_ok()
        );
        let narrow = TensorMapSpec::fp8_attention_operand(0x1000, 1, 9, 3, 8, 128);
        assert!(narrow.check().unwrap_err().contains("stride 8"));
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
