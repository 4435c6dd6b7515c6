//! Models for fluxc: the `model.toml` schema and presets, the FLUX.1
//! transformer built in the IR, and loading of real checkpoints.
//!
//! The builder names every weight input as diffusers names it in its
//! checkpoints; [`checkpoint`] resolves those names against diffusers
//! (sharded) and original BFL files.

pub mod checkpoint;
pub mod config;
pub mod flux;

pub use config::ModelConfig;
