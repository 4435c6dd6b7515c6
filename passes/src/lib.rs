//! Graph-to-graph passes over the fluxc IR, one file per pass, and the
//! pipeline (`pipeline.rs`) that lists them in order.

pub mod conv1x1;
pub mod conv_im2col;
pub mod cse;
pub mod dce;
pub mod fp8;
pub mod fp8_attention;
pub mod fuse_qkv;
pub mod fusion;
pub mod hoist_weights;
pub mod options;
pub mod pipeline;
pub mod simplify;

pub use options::{Fp8Mode, Fp8Policy, PassOptions};
