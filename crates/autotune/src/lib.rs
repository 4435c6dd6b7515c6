//! Coordinate-descent autotuning of kernel and GEMM configurations, with a
//! persistent tuning cache.
//!
//! Empty so far: the crate is part of the workspace layout so the dependency
//! structure is fixed from the start.
