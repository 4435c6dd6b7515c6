//! One memory-mapped safetensors file: its parsed header, reads of row
//! ranges converted to f32, and the raw stored bytes.
//!
//! The header is parsed and validated by the `safetensors` crate
//! (`SafeTensors::read_metadata`), which also checks that the tensors' byte
//! ranges exactly cover the file, so a truncated file is rejected when it is
//! opened. Only the rows asked for are converted, so slicing a fused tensor
//! does not convert the whole of it. Weights are read from F32, BF16 and F16
//! ([`SafetensorsFile::read_rows`]); any other stored dtype is an error
//! naming the tensor. [`SafetensorsFile::read_any`] converts every numeric
//! dtype (for activations and reference data, where ints and fp8 occur).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::{CheckpointError, DeriveError};

/// Bytes of the little-endian header length that starts every file.
const HEADER_LEN_BYTES: usize = 8;

/// The dtypes [`SafetensorsFile::read_rows`] converts, in words.
const WEIGHT_DTYPES: &str = "F32, BF16 and F16";
/// The dtypes [`SafetensorsFile::read_any`] converts, in words.
const ANY_DTYPES: &str = "F64, F32, BF16, F16, F8_E4M3, F8_E5M2, integer and BOOL";

/// A safetensors file, mapped and with its header parsed.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the header) in the file.
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Maps `path` and parses its header.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::NotFound {
                path: path.to_path_buf(),
            },
            _ => io_err(source),
        })?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < HEADER_LEN_BYTES as u64 {
            // Mapping an empty file fails on some systems; say what is wrong instead.
            return Err(CheckpointError::Safetensors {
                path: path.to_path_buf(),
                source: SafeTensorError::HeaderTooSmall,
            });
        }
        // SAFETY: the map is read-only. Like every safetensors loader we rely
        // on nobody truncating or rewriting the checkpoint while it is loaded.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|source| CheckpointError::Safetensors {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            data_start: HEADER_LEN_BYTES + header_len,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the stored tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// The free-form `__metadata__` of the header (string keys and values),
    /// if it has one.
    pub fn user_metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Dtype and shape of `name`, if stored.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// Fails unless `name` is stored with a dtype that converts to f32 as a
    /// weight (F32, BF16, F16).
    pub fn check_dtype(&self, name: &str) -> Result<(), CheckpointError> {
        let info = self.require(name)?;
        element_size(info.dtype)
            .map(|_| ())
            .ok_or_else(|| self.unsupported(name, info.dtype, WEIGHT_DTYPES))
    }

    /// Rows `rows` of tensor `name` (dim 0; a rank-0 tensor is one row of one
    /// element), converted to f32. Only F32, BF16 and F16 are read.
    pub fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>, CheckpointError> {
        let info = self.require(name)?;
        let size = element_size(info.dtype)
            .ok_or_else(|| self.unsupported(name, info.dtype, WEIGHT_DTYPES))?;
        let (n_rows, row_elems) = row_layout(&info.shape);
        if rows.start > rows.end || rows.end > n_rows {
            return Err(CheckpointError::Derive {
                weight: name.to_string(),
                derivation: format!("`{name}` in `{}`", self.path.display()),
                source: DeriveError::RowsOutOfRange {
                    start: rows.start,
                    len: rows.end.saturating_sub(rows.start),
                    rows: n_rows,
                },
            });
        }
        let bytes = self.row_bytes(name, info, rows, row_elems * size)?;
        Ok(convert(info.dtype, bytes))
    }

    /// The stored bytes of rows `rows` of `name` (little-endian elements of
    /// its stored dtype), without conversion. `None` for dtypes whose
    /// elements are not whole bytes (F4, F6).
    pub fn raw_rows(
        &self,
        name: &str,
        rows: Range<usize>,
    ) -> Result<Option<(Dtype, &[u8])>, CheckpointError> {
        let info = self.require(name)?;
        let bits = info.dtype.bitsize();
        if bits % 8 != 0 {
            return Ok(None);
        }
        let (n_rows, row_elems) = row_layout(&info.shape);
        if rows.start > rows.end || rows.end > n_rows {
            return Ok(None);
        }
        let bytes = self.row_bytes(name, info, rows, row_elems.saturating_mul(bits / 8))?;
        Ok(Some((info.dtype, bytes)))
    }

    /// All of tensor `name` converted to f32 from any numeric stored dtype
    /// (floats, fp8, integers, bool), for activations and reference data.
    /// Integers beyond 2^24 lose precision.
    pub fn read_any(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let info = self.require(name)?;
        let (rows, _) = row_layout(&info.shape);
        let Some((dtype, bytes)) = self.raw_rows(name, 0..rows)? else {
            return Err(self.unsupported(name, info.dtype, ANY_DTYPES));
        };
        convert_any(dtype, bytes).ok_or_else(|| self.unsupported(name, dtype, ANY_DTYPES))
    }

    /// The bytes of rows `rows` of a tensor whose rows are `row_bytes` long.
    fn row_bytes(
        &self,
        name: &str,
        info: &TensorInfo,
        rows: Range<usize>,
        row_bytes: usize,
    ) -> Result<&[u8], CheckpointError> {
        let at = |row: usize| {
            row.checked_mul(row_bytes)
                .and_then(|b| b.checked_add(info.data_offsets.0))
                .and_then(|b| b.checked_add(self.data_start))
        };
        at(rows.start)
            .zip(at(rows.end))
            .and_then(|(b, e)| self.mmap.get(b..e))
            .ok_or_else(|| CheckpointError::Safetensors {
                path: self.path.clone(),
                source: SafeTensorError::InvalidOffset(name.to_string()),
            })
    }

    /// The header entry of `name`, or an error if the file lacks it.
    fn require(&self, name: &str) -> Result<&TensorInfo, CheckpointError> {
        self.metadata
            .info(name)
            .ok_or_else(|| CheckpointError::Safetensors {
                path: self.path.clone(),
                source: SafeTensorError::TensorNotFound(name.to_string()),
            })
    }

    fn unsupported(&self, name: &str, dtype: Dtype, supported: &'static str) -> CheckpointError {
        CheckpointError::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: dtype.to_string(),
            path: self.path.clone(),
            supported,
        }
    }
}

/// `(rows, elements per row)` of a shape; rank 0 is one row of one element.
pub fn row_layout(shape: &[usize]) -> (usize, usize) {
    match shape.split_first() {
        // Saturating: a header may pair a zero dim with huge others.
        Some((&rows, rest)) => (rows, rest.iter().fold(1, |a, &d| a.saturating_mul(d))),
        None => (1, 1),
    }
}

/// Bytes per element of the dtypes weights are read from.
fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        _ => None,
    }
}

/// Little-endian elements of `dtype` (one of F32, BF16, F16) to f32.
fn convert(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => halves(bytes)
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect(),
        _ => halves(bytes)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect(),
    }
}

/// Little-endian elements of any numeric dtype to f32; `None` for dtypes
/// without a conversion (complex, sub-byte and exotic fp8 formats).
fn convert_any(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes
            .chunks_exact(N)
            .map(|c| c.try_into().expect("chunk of N bytes"))
    }
    Some(match dtype {
        Dtype::F32 | Dtype::BF16 | Dtype::F16 => convert(dtype, bytes),
        Dtype::F64 => words::<8>(bytes)
            .map(|w| f64::from_le_bytes(w) as f32)
            .collect(),
        Dtype::F8_E4M3 => bytes
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect(),
        Dtype::F8_E5M2 => bytes
            .iter()
            .map(|&b| float8::F8E5M2::from_bits(b).to_f32())
            .collect(),
        Dtype::BOOL => bytes.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
        Dtype::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        Dtype::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        Dtype::I16 => words::<2>(bytes)
            .map(|w| f32::from(i16::from_le_bytes(w)))
            .collect(),
        Dtype::U16 => words::<2>(bytes)
            .map(|w| f32::from(u16::from_le_bytes(w)))
            .collect(),
        Dtype::I32 => words::<4>(bytes)
            .map(|w| i32::from_le_bytes(w) as f32)
            .collect(),
        Dtype::U32 => words::<4>(bytes)
            .map(|w| u32::from_le_bytes(w) as f32)
            .collect(),
        Dtype::I64 => words::<8>(bytes)
            .map(|w| i64::from_le_bytes(w) as f32)
            .collect(),
        Dtype::U64 => words::<8>(bytes)
            .map(|w| u64::from_le_bytes(w) as f32)
            .collect(),
        _ => return None,
    })
}

/// The little-endian u16 words of `bytes`.
fn halves(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_float_dtype() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(convert(Dtype::F32, &f32_bytes), vals);
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let expected: Vec<f32> = vals
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(convert(Dtype::BF16, &bf), expected);
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        assert_eq!(convert(Dtype::F16, &f16), vals);
    }

    #[test]
    fn only_float_dtypes_have_a_size() {
        assert_eq!(element_size(Dtype::F32), Some(4));
        assert_eq!(element_size(Dtype::BF16), Some(2));
        assert_eq!(element_size(Dtype::F16), Some(2));
        for d in [
            Dtype::I32,
            Dtype::F64,
            Dtype::F8_E4M3,
            Dtype::U8,
            Dtype::BOOL,
        ] {
            assert_eq!(element_size(d), None, "{d}");
        }
    }

    #[test]
    fn any_numeric_dtype_converts() {
        let ints: Vec<u8> = [-3i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(convert_any(Dtype::I32, &ints), Some(vec![-3.0, 7.0]));
        let longs: Vec<u8> = [5i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(convert_any(Dtype::I64, &longs), Some(vec![5.0, -1.0]));
        let doubles: Vec<u8> = [0.5f64, -8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(convert_any(Dtype::F64, &doubles), Some(vec![0.5, -8.0]));
        // e4m3 0x38 = 1.0, 0x7e = 448; e5m2 0x3c = 1.0, 0x7b = 57344.
        assert_eq!(
            convert_any(Dtype::F8_E4M3, &[0x38, 0x7e, 0xb8]),
            Some(vec![1.0, 448.0, -1.0])
        );
        assert_eq!(
            convert_any(Dtype::F8_E5M2, &[0x3c, 0x7b]),
            Some(vec![1.0, 57344.0])
        );
        assert_eq!(
            convert_any(Dtype::BOOL, &[0, 1, 2]),
            Some(vec![0.0, 1.0, 1.0])
        );
        assert_eq!(convert_any(Dtype::U8, &[255]), Some(vec![255.0]));
        assert_eq!(convert_any(Dtype::I8, &[255]), Some(vec![-1.0]));
        assert_eq!(convert_any(Dtype::C64, &[0; 8]), None);
    }

    #[test]
    fn row_layout_of_shapes() {
        assert_eq!(row_layout(&[]), (1, 1));
        assert_eq!(row_layout(&[6]), (6, 1));
        assert_eq!(row_layout(&[6, 4, 2]), (6, 8));
        assert_eq!(row_layout(&[0, 4]), (0, 4));
    }
}
