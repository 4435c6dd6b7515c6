//! fluxc: an ahead-of-time compiler for the FLUX.1 text-to-image models on
//! NVIDIA Hopper GPUs. This facade re-exports the workspace crates and hosts
//! the integration tests (`tests/`) and benches (`benches/`).

pub use fluxc_artifact as artifact;
pub use fluxc_codegen as codegen;
pub use fluxc_ir as ir;
pub use fluxc_models as models;
pub use fluxc_passes as passes;
pub use fluxc_runtime as runtime;
