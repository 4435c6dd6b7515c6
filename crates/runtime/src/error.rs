//! The runtime's error type.
//!
//! Every variant says what to look at: the artifact file, the checkpoint
//! tensor, the step of the schedule, or the CUDA call that failed and what
//! the runtime was doing when it did.

use std::path::PathBuf;

use cudarc::cublaslt::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;
use fluxc_checkpoint::CheckpointError;

/// Why the runtime could not load or run an artifact.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An artifact file could not be read.
    #[error("cannot read artifact file `{}`: {source}", path.display())]
    ArtifactIo {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An artifact file is not valid JSON of the expected type.
    #[error("`{}` is not a valid {what}: {source}", path.display())]
    ArtifactJson {
        /// The file.
        path: PathBuf,
        /// What it should hold (`manifest`, `schedule`).
        what: &'static str,
        /// What the parser found.
        source: serde_json::Error,
    },
    /// The artifact was written in another format version.
    #[error(
        "artifact `{}` has format version {found}, but this runtime reads format version \
         {expected}: recompile it with a matching fluxc",
        dir.display()
    )]
    FormatVersion {
        /// The artifact directory.
        dir: PathBuf,
        /// The manifest's version.
        found: u32,
        /// The version this runtime reads.
        expected: u32,
    },
    /// `schedule.json` and `kernels.cu` are not the files the manifest was
    /// written with.
    #[error(
        "artifact files do not match their manifest in `{}`: schedule.json and kernels.cu \
         hash to {actual}, manifest.json records {recorded} (a file was edited or the \
         artifact is partially written; recompile it)",
        dir.display()
    )]
    HashMismatch {
        /// The artifact directory.
        dir: PathBuf,
        /// The hash recorded in the manifest.
        recorded: String,
        /// The hash of the files on disk.
        actual: String,
    },
    /// The schedule fails validation, or the artifact is inconsistent.
    #[error("invalid artifact `{}`: {reason}", dir.display())]
    InvalidArtifact {
        /// The artifact directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint matches none of the artifact's layouts.
    #[error(
        "checkpoint `{}` matches none of the artifact's checkpoint layouts:\n{details}",
        checkpoint.display()
    )]
    NoMatchingLayout {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Per layout, what is missing.
        details: String,
    },
    /// A weight derived from the checkpoint does not fill its buffer.
    #[error(
        "weight `{weight}`: the checkpoint gives {found} elements (shape {shape:?}, from \
         {derivation}), but its buffer `{buffer}` holds {expected}"
    )]
    WeightSize {
        /// The weight.
        weight: String,
        /// Its buffer's name.
        buffer: String,
        /// Elements the buffer holds.
        expected: u64,
        /// Elements derived.
        found: u64,
        /// The derived shape.
        shape: Vec<usize>,
        /// The derivation, in words.
        derivation: String,
    },
    /// CUDA (driver, NVRTC or cuBLASLt) is not available on this machine.
    #[error("CUDA is not available: {0}")]
    NoCuda(String),
    /// The GPU cannot run the artifact's kernels.
    #[error("{0}")]
    Device(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error while {what}: {source}")]
    Driver {
        /// What the runtime was doing.
        what: String,
        /// The driver's error.
        source: DriverError,
    },
    /// An NVRTC call failed (other than compilation errors).
    #[error("NVRTC error while {what}: {source}")]
    Nvrtc {
        /// What the runtime was doing.
        what: String,
        /// NVRTC's error.
        source: NvrtcError,
    },
    /// NVRTC rejected a source (`kernels.cu`, or the runtime's `quantize.cu`).
    #[error("NVRTC failed to compile {file} for {arch} (options: {options}):\n{log}")]
    Compile {
        /// The source's file name.
        file: String,
        /// The target architecture.
        arch: String,
        /// The compile options.
        options: String,
        /// NVRTC's log.
        log: String,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt error while {what}: {source}")]
    Cublas {
        /// What the runtime was doing.
        what: String,
        /// cuBLASLt's status.
        source: CublasError,
    },
    /// A step of the schedule cannot be prepared (names the step).
    #[error("step {index} ({step}): {reason}")]
    Step {
        /// Index in `schedule.steps`.
        index: usize,
        /// The step, in words.
        step: String,
        /// What is wrong.
        reason: String,
    },
    /// A step failed while running eagerly.
    #[error("step {index} ({step}) failed: {source}")]
    StepFailed {
        /// Index in `schedule.steps`.
        index: usize,
        /// The step, in words.
        step: String,
        /// The error.
        source: Box<RuntimeError>,
    },
    /// No input or output of that name.
    #[error("the schedule has no {kind} named `{name}` (it has: {known})")]
    UnknownBinding {
        /// `input` or `output`.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names it has.
        known: String,
    },
    /// Input data of the wrong length.
    #[error("input `{name}` takes {expected} elements (shape {shape:?}), got {found}")]
    InputSize {
        /// The input.
        name: String,
        /// Elements the buffer holds.
        expected: u64,
        /// Elements given.
        found: usize,
        /// The buffer's shape.
        shape: Vec<u64>,
    },
    /// A run was asked for before every input was set.
    #[error("input `{0}` was not set before the run (set every input with `set_input`)")]
    InputNotSet(String),
    /// No buffer with that id.
    #[error("the schedule has no buffer {0}")]
    NoSuchBuffer(u32),
    /// The cache of quantized fp8 weights cannot be written, or is corrupt.
    #[error("quantized weights cache `{}`: {reason}", path.display())]
    QuantizedCache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Something the runtime does not support yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl RuntimeError {
    /// A [`RuntimeError::Driver`] for a failure while doing `what`.
    pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(DriverError) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Driver { what, source }
    }

    /// A [`RuntimeError::Cublas`] for a failure while doing `what`.
    pub(crate) fn cublas(what: impl Into<String>) -> impl FnOnce(CublasError) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Cublas { what, source }
    }

    /// A [`RuntimeError::Nvrtc`] for a failure while doing `what`.
    pub(crate) fn nvrtc(what: impl Into<String>) -> impl FnOnce(NvrtcError) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Nvrtc { what, source }
    }
}
