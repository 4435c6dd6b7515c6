//! The `model.toml` schema.
//!
//! A model.toml names a model, its architecture hyperparameters (the keys of
//! diffusers' `FluxTransformer2DModel` config, plus `hidden_size` as BFL's
//! configs state it) and the fixed shapes it is compiled for. Unknown keys are
//! rejected so a typo never silently falls back to a default.
//! `models/README.md` documents every key.

use serde::Deserialize;

/// A whole model.toml.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `[model]`: name and dtype.
    pub model: ModelSection,
    /// `[transformer]`: FLUX transformer hyperparameters.
    pub transformer: TransformerConfig,
    /// `[shapes]`: the static shapes the model is compiled for.
    pub shapes: ShapesConfig,
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Free-form name (used in reports and artifact names).
    pub name: String,
    /// Architecture; only `"flux-transformer"` so far.
    pub architecture: Architecture,
    /// Storage and compute dtype of weights and activations.
    pub dtype: ModelDType,
}

/// Model architectures fluxc can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// diffusers' `FluxTransformer2DModel` (FLUX.1 schnell and dev).
    FluxTransformer,
}

/// The dtypes a model can be compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDType {
    /// float32 (tiny test models, references).
    F32,
    /// bfloat16 (the production dtype).
    Bf16,
    /// float16.
    F16,
}

impl ModelDType {
    /// The IR dtype.
    pub fn ir(self) -> fluxc_ir::DType {
        match self {
            ModelDType::F32 => fluxc_ir::DType::F32,
            ModelDType::Bf16 => fluxc_ir::DType::BF16,
            ModelDType::F16 => fluxc_ir::DType::F16,
        }
    }
}

/// `[transformer]`: names follow diffusers' `config.json` for
/// `FluxTransformer2DModel`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Patch size; FLUX.1 uses 1 (latents arrive already 2×2-packed).
    #[serde(default = "one")]
    pub patch_size: usize,
    /// Features per image token (FLUX.1: 64 = 16 latent channels × 2×2).
    pub in_channels: usize,
    /// Features per output token; defaults to `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream blocks (FLUX.1: 19).
    pub num_layers: usize,
    /// Single-stream blocks (FLUX.1: 38).
    pub num_single_layers: usize,
    /// Width of one attention head (FLUX.1: 128).
    pub attention_head_dim: usize,
    /// Attention heads (FLUX.1: 24).
    pub num_attention_heads: usize,
    /// Model width; must equal heads × head dim (FLUX.1: 3072).
    pub hidden_size: usize,
    /// Width of the T5 text embeddings (FLUX.1: 4096).
    pub joint_attention_dim: usize,
    /// Width of the pooled CLIP embedding (FLUX.1: 768).
    pub pooled_projection_dim: usize,
    /// Guidance embedding (FLUX.1-dev: true, schnell: false).
    pub guidance_embeds: bool,
    /// Rotary widths per position axis; must sum to the head dim (FLUX.1: [16, 56, 56]).
    pub axes_dims_rope: Vec<usize>,
    /// Rotary base (FLUX.1: 10000).
    #[serde(default = "rope_theta")]
    pub rope_theta: f32,
    /// MLP width as a multiple of `hidden_size` (FLUX.1: 4.0).
    #[serde(default = "mlp_ratio")]
    pub mlp_ratio: f32,
}

/// `[shapes]`: fluxc compiles for one fixed shape.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesConfig {
    /// Images per forward.
    #[serde(default = "one")]
    pub batch: usize,
    /// Image height in pixels (multiple of 16).
    pub height: usize,
    /// Image width in pixels (multiple of 16).
    pub width: usize,
    /// Text tokens (FLUX.1-schnell: 256, dev: 512).
    pub text_tokens: usize,
}

fn one() -> usize {
    1
}

fn rope_theta() -> f32 {
    10000.0
}

fn mlp_ratio() -> f32 {
    4.0
}

/// Pixels per image token along each axis: the VAE downsamples by 8 and the
/// transformer packs 2×2 latent patches into one token.
pub const PIXELS_PER_TOKEN: usize = 16;

impl ModelConfig {
    /// Image tokens per image: `(height/16)·(width/16)`.
    pub fn image_tokens(&self) -> usize {
        (self.shapes.height / PIXELS_PER_TOKEN) * (self.shapes.width / PIXELS_PER_TOKEN)
    }

    /// Output features per image token.
    pub fn out_channels(&self) -> usize {
        self.transformer
            .out_channels
            .unwrap_or(self.transformer.in_channels)
    }

    /// Hidden width of the MLPs (`hidden_size · mlp_ratio`).
    pub fn mlp_hidden(&self) -> usize {
        (self.transformer.hidden_size as f64 * self.transformer.mlp_ratio as f64) as usize
    }
}
