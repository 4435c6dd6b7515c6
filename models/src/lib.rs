//! Models for fluxc: the `model.toml` schema and presets, the FLUX.1
//! transformer and the FLUX VAE decoder built in the IR, and loading of real
//! checkpoints.
//!
//! The builders name every weight input as diffusers names it in its
//! checkpoints; [`checkpoint`] resolves those names against diffusers
//! (sharded) and original BFL files. [`build_graph`] builds whichever model a
//! config's architecture names.

pub mod checkpoint;
pub mod config;
pub mod flux;
pub mod pipeline;
pub mod scheduler;
pub mod vae;

pub use config::{ModelConfig, Part};

use config::Architecture;
use fluxc_ir::{Graph, IrError};

/// Builds the graph of the model `cfg` describes (validated): the
/// transformer forward ([`flux::build_transformer`]) or `vae.decode`
/// ([`vae::build_vae_decoder`]), by `[model] architecture`; for a
/// transformer, the [`Part`] `cfg.part` names.
pub fn build_graph(cfg: &ModelConfig) -> Result<Graph, IrError> {
    match (cfg.model.architecture, cfg.part) {
        (Architecture::FluxTransformer, Part::Whole) => flux::build_transformer(cfg),
        (Architecture::FluxTransformer, Part::Conditioning { steps }) => {
            flux::build_conditioning(cfg, steps)
        }
        (Architecture::FluxTransformer, Part::Step) => flux::build_transformer_step(cfg),
        (Architecture::FluxVaeDecoder, Part::Whole) => vae::build_vae_decoder(cfg),
        (Architecture::FluxVaeDecoder, part) => Err(IrError::Invalid(format!(
            "a VAE decoder has no {part:?} part"
        ))),
    }
}
