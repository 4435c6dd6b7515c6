//! The artifact format shared by the compiler and the runtime: serde types
//! and their validation, nothing else.
//!
//! The runtime links this crate and nothing of the compiler, so everything it
//! must know to run a compiled model is expressible here. An artifact is a
//! directory:
//!
//! | file | type | holds |
//! | --- | --- | --- |
//! | `manifest.json` | [`Manifest`] | format version, content hash, weights and how to derive them from each checkpoint layout |
//! | `schedule.json` | [`Schedule`] | buffers at planned offsets and the ordered steps of one forward |
//! | `kernels.cu` | CUDA C++ | every generated kernel, `extern "C"` |
//! | `graph.txt` | text | the optimized IR, for humans |
//! | `fusion.txt` | text | the kernel grouping with refused fusions, for humans |
//!
//! A pipeline directory ([`PipelineSpec`], `pipeline.json`) holds a
//! transformer artifact and a VAE decoder artifact and the denoising loop
//! that drives them.
//!
//! Beside artifacts, `tuning.json` ([`TuningCache`]) keeps measured best
//! configurations across compiles.

mod manifest;
mod pipeline;
mod schedule;
mod tuning;
mod weights;

pub use manifest::{
    content_hash, hash_parts, CheckpointLayout, Manifest, WeightEntry, FORMAT_VERSION,
};
pub use pipeline::{
    HoistedConditioning, LatentShape, PipelineError, PipelineSpec, TransformerNames, VaeNames,
    CONDITIONING_DIR, PIPELINE_FILE, PIPELINE_FORMAT_VERSION, TRANSFORMER_DIR, VAE_DIR,
};
pub use schedule::{
    Arg, Attention, AttentionOperands, AttentionScales, AttentionSplit, Binding, Buffer, BufferId,
    Conv, Copy, ElemType, Gemm, GemmEpilogue, GemmScales, Launch, Region, ScaleMode, Schedule,
    ScheduleError, Step, Tensor, SPLIT_MERGE_ROWS,
};
pub use tuning::{tuning_key, TuningCache, TuningRecord, TUNING_FORMAT_VERSION};
pub use weights::{Fp8Format, WeightSource};

/// File names inside an artifact directory.
pub mod files {
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// The schedule.
    pub const SCHEDULE: &str = "schedule.json";
    /// The kernels' source.
    pub const KERNELS: &str = "kernels.cu";
    /// The optimized IR.
    pub const GRAPH: &str = "graph.txt";
    /// The fusion plan.
    pub const FUSION: &str = "fusion.txt";
}
