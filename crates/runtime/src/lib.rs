//! The runtime apps link: loads a compiled artifact and real checkpoint
//! weights, and runs the schedule as one CUDA graph. It depends only on
//! `fluxc-artifact`, never on the compiler.
//!
//! Empty so far: the crate is part of the workspace layout so the dependency
//! structure is fixed from the start.
