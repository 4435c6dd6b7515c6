//! The error types of checkpoint reading.
//!
//! Every variant names what the user has to look at: the file or directory,
//! the weight being derived (by the caller's name for it) and the checkpoint
//! tensor(s) it is derived from. Derivation problems (a row range past the
//! end of a fused tensor, odd halves) are [`DeriveError`]s wrapped with the
//! weight's name.

use std::fmt;
use std::path::PathBuf;

/// A shape written as `[8,4]` (the IR's notation), for messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ShapeText(pub Vec<usize>);

impl fmt::Display for ShapeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl From<Vec<usize>> for ShapeText {
    fn from(v: Vec<usize>) -> Self {
        ShapeText(v)
    }
}

impl From<&[usize]> for ShapeText {
    fn from(v: &[usize]) -> Self {
        ShapeText(v.to_vec())
    }
}

/// Why a [`fluxc_artifact::WeightSource`] could not be applied to the stored
/// tensors it reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// A `Rows` derivation reaches past the end of its source.
    #[error(
        "rows {start}..{} are out of range for a source of {rows} rows",
        start.saturating_add(*len)
    )]
    RowsOutOfRange {
        /// First row asked for.
        start: usize,
        /// Number of rows asked for.
        len: usize,
        /// Rows the source has.
        rows: usize,
    },
    /// `SwapHalves` of a source with an odd number of rows.
    #[error("cannot swap the halves of a source with an odd number of rows ({rows})")]
    OddHalves {
        /// Rows the source has.
        rows: usize,
    },
    /// A row derivation applied to a rank-0 tensor.
    #[error("a rank-0 tensor has no rows to slice, swap or concatenate")]
    NoRows,
    /// `Concat` with no parts.
    #[error("a concatenation needs at least one part")]
    EmptyConcat,
    /// `Concat` of parts whose trailing dimensions differ.
    #[error("cannot concatenate sources of shapes {first} and {other} along dim 0")]
    ConcatMismatch {
        /// Shape of the first part.
        first: ShapeText,
        /// Shape of the part that does not fit.
        other: ShapeText,
    },
    /// `Reshape` to a shape with a different element count.
    #[error("cannot reshape {from} to {to}: the element counts differ")]
    ReshapeCount {
        /// Shape of the source.
        from: ShapeText,
        /// Shape asked for.
        to: ShapeText,
    },
    /// `Permute` with axes that are not a permutation of the source's.
    #[error("{perm:?} is not a permutation of the {rank} axes of the source")]
    BadPermutation {
        /// The axes asked for.
        perm: Vec<usize>,
        /// The source's rank.
        rank: usize,
    },
    /// The derived data does not fill the derived shape (a loader bug).
    #[error("derived data does not match the derived shape: {0}")]
    Inconsistent(String),
}

/// Why checkpoint tensors could not be read or derived.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint path does not exist.
    #[error("checkpoint path `{}` does not exist", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directory holds no checkpoint in a known layout.
    #[error(
        "`{}` holds no checkpoint: expected \
         diffusion_pytorch_model.safetensors.index.json, \
         diffusion_pytorch_model.safetensors, or a transformer/ subfolder with one of them",
        dir.display()
    )]
    NoCheckpointInDir {
        /// The directory.
        dir: PathBuf,
    },
    /// A file is not a valid safetensors file (truncated, corrupt header, ...).
    #[error("`{}` is not a valid safetensors file: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser found.
        source: safetensors::SafeTensorError,
    },
    /// A sharded checkpoint's index file is malformed.
    #[error("bad shard index `{}`: {reason}", path.display())]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A sharded checkpoint's index names a shard file that does not exist.
    #[error("shard index `{}` names shard `{}`, which does not exist", index.display(), shard.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard file it names.
        shard: PathBuf,
    },
    /// The index maps a tensor to a shard that does not hold it.
    #[error(
        "shard index `{}` places tensor `{tensor}` in `{}`, which does not hold it",
        index.display(),
        shard.display()
    )]
    IndexMismatch {
        /// The index file.
        index: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard the index names.
        shard: PathBuf,
    },
    /// A weight has no counterpart in a checkpoint layout (raised by name
    /// maps built on this crate).
    #[error("graph weight `{weight}` has no counterpart in the {layout} checkpoint layout")]
    UnmappedWeight {
        /// The weight's name.
        weight: String,
        /// The layout, in words (`original BFL FLUX`).
        layout: String,
    },
    /// A checkpoint tensor a weight needs is not in the checkpoint.
    #[error(
        "graph weight `{weight}` needs checkpoint tensor {}, not found in `{}`",
        quote_list(missing),
        location.display()
    )]
    MissingTensor {
        /// The weight's name.
        weight: String,
        /// The checkpoint tensors it needs that are absent.
        missing: Vec<String>,
        /// The checkpoint file or directory.
        location: PathBuf,
    },
    /// A weight derived from the checkpoint has another shape than expected.
    #[error(
        "graph weight `{weight}` expects shape {expected}, but the checkpoint gives {found} (from {derivation})"
    )]
    ShapeMismatch {
        /// The weight's name.
        weight: String,
        /// Shape the caller expects.
        expected: ShapeText,
        /// Shape derived from the checkpoint.
        found: ShapeText,
        /// The derivation, described with its checkpoint tensor names.
        derivation: String,
    },
    /// A stored tensor's dtype cannot be converted to f32.
    #[error(
        "tensor `{tensor}` in `{}` is stored as {dtype}; only {supported} tensors can be loaded",
        path.display()
    )]
    UnsupportedDtype {
        /// The stored tensor.
        tensor: String,
        /// Its stored dtype.
        dtype: String,
        /// The file holding it.
        path: PathBuf,
        /// The dtypes that can be read here, in words (`F32, BF16 and F16`).
        supported: &'static str,
    },
    /// The weight's derivation does not apply to the stored tensors.
    #[error("cannot derive graph weight `{weight}` from the checkpoint ({derivation}): {source}")]
    Derive {
        /// The weight's name.
        weight: String,
        /// The derivation step that failed, described with its checkpoint
        /// tensor names.
        derivation: String,
        /// What went wrong.
        source: DeriveError,
    },
}

/// `` `a`, `b` `` for a list of names.
pub(crate) fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_print_like_the_ir() {
        assert_eq!(ShapeText(vec![8, 4]).to_string(), "[8,4]");
        assert_eq!(ShapeText(vec![]).to_string(), "[]");
        assert_eq!(ShapeText(vec![3]).to_string(), "[3]");
    }
}
