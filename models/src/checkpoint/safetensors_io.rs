//! One memory-mapped safetensors file: its parsed header and reads of row
//! ranges converted to f32.
//!
//! The header is parsed and validated by the `safetensors` crate
//! (`SafeTensors::read_metadata`), which also checks that the tensors' byte
//! ranges exactly cover the file, so a truncated file is rejected when it is
//! opened. Only the rows asked for are converted, so slicing a fused tensor
//! does not convert the whole of it. F32, BF16 and F16 are converted; any
//! other stored dtype is an error naming the tensor.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{CheckpointError, DeriveError};

/// Bytes of the little-endian header length that starts every file.
const HEADER_LEN_BYTES: usize = 8;

/// A safetensors file, mapped and with its header parsed.
#[derive(Debug)]
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the header) in the file.
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Maps `path` and parses its header.
    pub(crate) fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
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
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the stored tensors, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// Whether the file holds `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Dtype and shape of `name`, if stored.
    pub(crate) fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// Fails unless `name` is stored with a dtype that converts to f32.
    pub(crate) fn check_dtype(&self, name: &str) -> Result<(), CheckpointError> {
        let info = self.require(name)?;
        element_size(info.dtype)
            .map(|_| ())
            .ok_or_else(|| self.unsupported(name, info.dtype))
    }

    /// Rows `rows` of tensor `name` (dim 0; a rank-0 tensor is one row of one
    /// element), converted to f32.
    pub(crate) fn read_rows(
        &self,
        name: &str,
        rows: Range<usize>,
    ) -> Result<Vec<f32>, CheckpointError> {
        let info = self.require(name)?;
        let size = element_size(info.dtype).ok_or_else(|| self.unsupported(name, info.dtype))?;
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

    /// The bytes of rows `rows` of a tensor whose rows are `row_bytes` long.
    fn row_bytes(
        &self,
        name: &str,
        info: &TensorInfo,
        rows: Range<usize>,
        row_bytes: usize,
    ) -> Result<&[u8], CheckpointError> {
        let begin = rows
            .start
            .checked_mul(row_bytes)
            .and_then(|b| b.checked_add(info.data_offsets.0))
            .and_then(|b| b.checked_add(self.data_start));
        let end = rows
            .end
            .checked_mul(row_bytes)
            .and_then(|b| b.checked_add(info.data_offsets.0))
            .and_then(|b| b.checked_add(self.data_start));
        begin
            .zip(end)
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

    fn unsupported(&self, name: &str, dtype: Dtype) -> CheckpointError {
        CheckpointError::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: dtype.to_string(),
            path: self.path.clone(),
        }
    }
}

/// `(rows, elements per row)` of a shape; rank 0 is one row of one element.
pub(crate) fn row_layout(shape: &[usize]) -> (usize, usize) {
    match shape.split_first() {
        // Saturating: a header may pair a zero dim with huge others.
        Some((&rows, rest)) => (rows, rest.iter().fold(1, |a, &d| a.saturating_mul(d))),
        None => (1, 1),
    }
}

/// Bytes per element of the dtypes that convert to f32.
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
    fn row_layout_of_shapes() {
        assert_eq!(row_layout(&[]), (1, 1));
        assert_eq!(row_layout(&[6]), (6, 1));
        assert_eq!(row_layout(&[6, 4, 2]), (6, 8));
        assert_eq!(row_layout(&[0, 4]), (0, 4));
    }
}
