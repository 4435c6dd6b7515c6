//! Code generation: fused groups of IR ops become CUDA C++ kernels rendered
//! from templates, GEMMs and attention get their backends, and a static memory
//! plan and schedule are written into the artifact.
//!
//! Nothing is generated yet: the crate is part of the workspace layout so the
//! dependency structure is fixed from the start.
