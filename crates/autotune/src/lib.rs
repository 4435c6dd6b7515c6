//! Coordinate-descent autotuning of kernel and GEMM configurations.
//!
//! The search itself is independent of what is tuned: a [`ConfigSpace`] of
//! named fields with ordered values, a starting configuration (the
//! heuristic default) and a measure that times one configuration or rejects
//! it. [`coordinate_descent`] walks the space as Inductor's
//! `coordinate_descent_tuning` does. What the measure times on the GPU
//! (generated kernels, cuBLASLt algorithms) is built on top; [`cache`]
//! keeps results in `tuning.json` across compiles; [`budget`] bounds the
//! wall time of a whole tuning run.

pub mod budget;
pub mod cache;
pub mod search;
pub mod space;

pub use budget::{BadBudget, Budget};
pub use search::{
    coordinate_descent, coordinate_descent_screened, Measurement, SearchError, SearchOptions,
    SearchResult,
};
pub use space::{Config, ConfigSpace, Field};
