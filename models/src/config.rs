//! The `model.toml` schema.
//!
//! A model.toml names a model and its architecture, the hyperparameters of
//! that architecture (`[transformer]`: the keys of diffusers'
//! `FluxTransformer2DModel` config, plus `hidden_size` as BFL's configs state
//! it; `[vae]`: the keys of diffusers' `AutoencoderKL` config) and the fixed
//! shapes it is compiled for. Unknown keys are rejected so a typo never
//! silently falls back to a default. `models/README.md` documents every key.
//!
//! Which sections a file has depends on `[model] architecture`; after
//! validation the architecture's section is present, and the accessors
//! ([`ModelConfig::transformer`], [`ModelConfig::vae`],
//! [`ModelConfig::text_tokens`]) return it (or a [`MissingSection`] error on
//! an unvalidated config, never a panic).
//!
//! `[passes]` switches the pass pipeline and `[autotune]` (module
//! [`autotune`]) configures tuning.
//!
//! [`ModelConfig::load`] and [`ModelConfig::from_toml_str`] parse a file and
//! check the rules serde cannot express ([`ModelConfig::validate`]). Every
//! failure is a [`ConfigError`] that displays like a compiler diagnostic,
//! `PATH:LINE:COL: [FIELD: ]MESSAGE`, pointing at the offending text.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fluxc_passes::{Fp8Mode, Fp8Policy, PassOptions};
use serde::Deserialize;

pub mod autotune;

pub use autotune::AutotuneConfig;

/// A whole model.toml.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `[model]`: name and dtype.
    pub model: ModelSection,
    /// `[transformer]`: FLUX transformer hyperparameters (architecture
    /// `flux-transformer` only).
    #[serde(default)]
    pub transformer: Option<TransformerConfig>,
    /// `[vae]`: FLUX VAE hyperparameters (architecture `flux-vae-decoder`
    /// only).
    #[serde(default)]
    pub vae: Option<VaeConfig>,
    /// `[shapes]`: the static shapes the model is compiled for.
    pub shapes: ShapesConfig,
    /// `[passes]`: which optimizations run (all on by default).
    #[serde(default)]
    pub passes: PassesConfig,
    /// `[autotune]`: how `fluxc compile --tune` searches and where it keeps
    /// its measurements.
    #[serde(default)]
    pub autotune: AutotuneConfig,
    /// Which graph of the model to build: not a model.toml key; a pipeline
    /// compile sets it for the transformer's two parts.
    #[serde(skip)]
    pub part: Part,
}

/// Which graph of a model [`crate::build_graph`] builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Part {
    /// The model's whole forward.
    #[default]
    Whole,
    /// A transformer's conditioning for `steps` denoising steps at once
    /// ([`crate::flux::build_conditioning`]).
    Conditioning {
        /// Denoising steps.
        steps: usize,
    },
    /// A transformer's forward with the modulation vectors as input
    /// ([`crate::flux::build_transformer_step`]).
    Step,
}

/// `[passes]`: switches of the pass pipeline. Every key is optional; the
/// defaults are "all on", epilogue fusion on, fp8 off.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassesConfig {
    /// Common subexpression elimination.
    pub cse: bool,
    /// View and data-movement simplification.
    pub simplify: bool,
    /// 1×1 convolutions as matmuls.
    pub conv1x1_as_mm: bool,
    /// Fusion of linears that share an input (q/k/v, q/k/v/mlp).
    pub fuse_qkv: bool,
    /// Linears with fewer input rows are not fused.
    pub fuse_qkv_min_rows: usize,
    /// Pointwise tails fused into the producing GEMM.
    pub epilogue_fusion: bool,
    /// `"off"`, `"dynamic-tensor"` or `"dynamic-row"`.
    pub fp8: Fp8Setting,
    /// Scope globs of the linears fp8 applies to (default: the blocks).
    pub fp8_include: Option<Vec<String>>,
    /// Scope globs never quantized (default: the modulation linears).
    pub fp8_exclude: Option<Vec<String>>,
    /// Linears with fewer input rows stay unquantized (0: no limit).
    pub fp8_min_rows: usize,
    /// Fast fp8 accumulation in the fp8 GEMMs (torchao's default).
    pub fp8_fast_accumulation: bool,
    /// Attention in fp8 e4m3 too (with `fp8` on; every bf16 attention with
    /// 128-wide heads). On by default (measured faster on the H200 at the
    /// same error; see `Fp8Policy::attention`).
    pub fp8_attention: bool,
    /// The large one-row linears in fp8 too (with `fp8` on; FLUX's
    /// modulation product; see `Fp8Policy::one_row`).
    pub fp8_one_row: bool,
    /// Convolutions through cuDNN (no im2col patch matrix); the runtime
    /// then needs cuDNN 9.
    pub cudnn_convolutions: bool,
    /// GEMMs compute their residual-add tails themselves (on by default).
    pub residual_in_gemm: bool,
}

/// `[passes] fp8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Fp8Setting {
    /// No fp8.
    #[default]
    Off,
    /// Per-tensor dynamic scales.
    DynamicTensor,
    /// Per-row (activations) and per-output-channel (weights) scales.
    DynamicRow,
}

impl Fp8Setting {
    /// The value written in a model.toml.
    pub fn name(self) -> &'static str {
        match self {
            Fp8Setting::Off => "off",
            Fp8Setting::DynamicTensor => "dynamic-tensor",
            Fp8Setting::DynamicRow => "dynamic-row",
        }
    }
}

impl Default for PassesConfig {
    fn default() -> Self {
        PassesConfig::from_options(&PassOptions::default())
    }
}

impl PassesConfig {
    fn from_options(o: &PassOptions) -> Self {
        PassesConfig {
            cse: o.cse,
            simplify: o.simplify,
            conv1x1_as_mm: o.conv1x1_as_mm,
            fuse_qkv: o.fuse_qkv,
            fuse_qkv_min_rows: o.fuse_qkv_min_rows,
            epilogue_fusion: o.epilogue_fusion,
            fp8: Fp8Setting::Off,
            fp8_include: None,
            fp8_exclude: None,
            fp8_min_rows: o.fp8_policy.min_rows,
            fp8_fast_accumulation: o.fp8_fast_accumulation,
            fp8_attention: o.fp8_policy.attention,
            fp8_one_row: o.fp8_policy.one_row,
            cudnn_convolutions: o.cudnn_convolutions,
            residual_in_gemm: o.residual_in_gemm,
        }
    }

    /// The pass pipeline's options.
    pub fn options(&self) -> PassOptions {
        let default_policy = Fp8Policy::default();
        PassOptions {
            cse: self.cse,
            simplify: self.simplify,
            conv1x1_as_mm: self.conv1x1_as_mm,
            fuse_qkv: self.fuse_qkv,
            fuse_qkv_min_rows: self.fuse_qkv_min_rows,
            epilogue_fusion: self.epilogue_fusion,
            fp8: match self.fp8 {
                Fp8Setting::Off => Fp8Mode::Off,
                Fp8Setting::DynamicTensor => Fp8Mode::DynamicTensor,
                Fp8Setting::DynamicRow => Fp8Mode::DynamicRow,
            },
            fp8_policy: Fp8Policy {
                include: self.fp8_include.clone().unwrap_or(default_policy.include),
                exclude: self.fp8_exclude.clone().unwrap_or(default_policy.exclude),
                min_rows: self.fp8_min_rows,
                bf16_shapes: Vec::new(),
                attention: self.fp8_attention,
                one_row: self.fp8_one_row,
            },
            fp8_fast_accumulation: self.fp8_fast_accumulation,
            cudnn_convolutions: self.cudnn_convolutions,
            residual_in_gemm: self.residual_in_gemm,
        }
    }
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Free-form name (used in reports and artifact names).
    pub name: String,
    /// Architecture: `"flux-transformer"` or `"flux-vae-decoder"`.
    pub architecture: Architecture,
    /// Storage and compute dtype of weights and activations.
    pub dtype: ModelDType,
}

/// Model architectures fluxc can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// diffusers' `FluxTransformer2DModel` (FLUX.1 schnell and dev); needs
    /// `[transformer]` and `shapes.text_tokens`.
    FluxTransformer,
    /// The decoder of diffusers' `AutoencoderKL` as FLUX.1 configures it
    /// (`vae.decode(z)`); needs `[vae]`.
    FluxVaeDecoder,
}

impl Architecture {
    /// The name written in a model.toml.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::FluxTransformer => "flux-transformer",
            Architecture::FluxVaeDecoder => "flux-vae-decoder",
        }
    }

    /// The hyperparameter table this architecture needs.
    pub fn section(self) -> &'static str {
        match self {
            Architecture::FluxTransformer => "transformer",
            Architecture::FluxVaeDecoder => "vae",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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

/// `[vae]`: names follow diffusers' `config.json` for `AutoencoderKL`
/// (`vae/config.json` of a FLUX.1 release). fluxc builds the decoder only.
///
/// FLUX's VAE has no quant/post-quant convolutions, so diffusers'
/// `use_quant_conv` and `use_post_quant_conv` (both `false` there) are not
/// keys; neither are the keys fixed by FLUX (`act_fn = "silu"`, the block
/// types) or only used elsewhere (`sample_size`, `force_upcast`,
/// `latents_mean`, `latents_std`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    /// Image channels the encoder reads (FLUX: 3); the decoder does not use it.
    pub in_channels: usize,
    /// Image channels the decoder writes (FLUX: 3).
    pub out_channels: usize,
    /// Latent channels (FLUX: 16).
    pub latent_channels: usize,
    /// Channels of each resolution level, finest first (FLUX: [128, 256, 512, 512]).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder level; every decoder level has one more (FLUX: 2).
    pub layers_per_block: usize,
    /// Groups of every GroupNorm (FLUX: 32).
    pub norm_num_groups: usize,
    /// Latent scale (FLUX: 0.3611); the pipeline decodes
    /// `latents / scaling_factor + shift_factor`, `vae.decode` itself does not use it.
    pub scaling_factor: f32,
    /// Latent shift (FLUX: 0.1159; diffusers' `null` is 0).
    pub shift_factor: f32,
    /// Whether the mid block has its self-attention (FLUX: true).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Channels of the coarsest level: the mid block's width, and the
    /// width of its attention (FLUX: 512). 0 for an (invalid) empty list.
    pub fn mid_channels(&self) -> usize {
        self.block_out_channels.last().copied().unwrap_or(0)
    }
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
    /// Text tokens (FLUX.1-schnell: 256, dev: 512); required by
    /// `flux-transformer`, not allowed for `flux-vae-decoder`.
    #[serde(default)]
    pub text_tokens: Option<usize>,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
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

/// Pixels per latent pixel along each axis: FLUX's VAE has four levels, three
/// of them ×2 up- (decoder) or downsamplings (encoder).
pub const VAE_SCALE: usize = 8;

/// The number of entries of `[vae] block_out_channels` fluxc supports
/// (giving [`VAE_SCALE`]).
pub const VAE_LEVELS: usize = 4;

impl TransformerConfig {
    /// Output features per image token (`out_channels`, else `in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Hidden width of the MLPs (`hidden_size · mlp_ratio`).
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio as f64) as usize
    }
}

/// A section or key the caller needs is absent from a [`ModelConfig`]: it is
/// not part of the configured architecture (a validated config always has
/// the ones its architecture needs).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the model has no {what} (its architecture is \"{architecture}\")")]
pub struct MissingSection {
    /// What is missing: `[transformer]`, `[vae]` or `shapes.text_tokens`.
    pub what: &'static str,
    /// The model's architecture.
    pub architecture: Architecture,
}

impl ModelConfig {
    /// Image tokens per image: `(height/16)·(width/16)`.
    pub fn image_tokens(&self) -> usize {
        (self.shapes.height / PIXELS_PER_TOKEN) * (self.shapes.width / PIXELS_PER_TOKEN)
    }

    /// Latent height and width: `(height/8, width/8)`.
    pub fn latent_size(&self) -> (usize, usize) {
        (
            self.shapes.height / VAE_SCALE,
            self.shapes.width / VAE_SCALE,
        )
    }

    /// `[transformer]`, present when the architecture is `flux-transformer`
    /// and the config validated.
    pub fn transformer(&self) -> Result<&TransformerConfig, MissingSection> {
        self.transformer
            .as_ref()
            .ok_or_else(|| self.missing("[transformer]"))
    }

    /// `[vae]`, present when the architecture is `flux-vae-decoder` and the
    /// config validated.
    pub fn vae(&self) -> Result<&VaeConfig, MissingSection> {
        self.vae.as_ref().ok_or_else(|| self.missing("[vae]"))
    }

    /// `shapes.text_tokens`, present when the architecture is
    /// `flux-transformer` and the config validated.
    pub fn text_tokens(&self) -> Result<usize, MissingSection> {
        self.shapes
            .text_tokens
            .ok_or_else(|| self.missing("shapes.text_tokens"))
    }

    fn missing(&self, what: &'static str) -> MissingSection {
        MissingSection {
            what,
            architecture: self.model.architecture,
        }
    }
}

// ---------------------------------------------------------------------------
// Loading, validation and errors.
// ---------------------------------------------------------------------------

/// Why a model.toml could not be loaded.
///
/// Every variant displays like a compiler diagnostic:
/// `PATH:LINE:COL: MESSAGE`, or `PATH:LINE:COL: FIELD: MESSAGE` for a
/// semantic error (`:LINE:COL` is left out when the location is unknown).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read model file `{}`: {source}", path.display())]
    Io {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not valid TOML, or does not fit the schema: a syntax
    /// error, an unknown key, a value of the wrong type or a missing key.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file (or origin name) the source came from.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// What is wrong, on one line.
        message: String,
    },
    /// The file parses but breaks a semantic rule (see
    /// [`ModelConfig::validate`]).
    #[error("{}{}: {field}: {message}", path.display(), Location(*line, *column))]
    Invalid {
        /// The file (or origin name) the source came from.
        path: PathBuf,
        /// Dotted key of the offending setting, e.g. `transformer.hidden_size`.
        field: String,
        /// 1-based line of the key, if it appears in the file.
        line: Option<usize>,
        /// 1-based column of the key, if it appears in the file.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// A broken semantic rule, found by [`ModelConfig::validate`] before it is
/// tied to a file and location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Violation {
    /// Dotted key of the offending setting, e.g. `shapes.height`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Violation {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Violation {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Formats `:LINE:COL` (or `:LINE` when only the line is known), and
/// nothing when the location is unknown.
struct Location(Option<usize>, Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}"),
            (Some(line), None) => write!(f, ":{line}"),
            _ => Ok(()),
        }
    }
}

impl ModelConfig {
    /// Reads, parses and validates the model.toml at `path`.
    pub fn load(path: &Path) -> Result<ModelConfig, ConfigError> {
        let source = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ModelConfig::from_toml_str(&source, path)
    }

    /// Parses and validates model.toml text; `origin` names the source in
    /// errors (usually the file it was read from).
    pub fn from_toml_str(source: &str, origin: &Path) -> Result<ModelConfig, ConfigError> {
        let config: ModelConfig =
            toml::from_str(source).map_err(|error| parse_error(&error, source, origin))?;
        config
            .validate()
            .map_err(|violation| invalid_error(violation, source, origin))?;
        Ok(config)
    }

    /// Checks the semantic rules the schema cannot express; returns the first
    /// rule broken. `models/README.md` lists the rules.
    pub fn validate(&self) -> Result<(), Violation> {
        validate_model(&self.model)?;
        validate_sections(self)?;
        if let Some(t) = &self.transformer {
            validate_transformer(t)?;
        }
        if let Some(v) = &self.vae {
            validate_vae(v)?;
        }
        validate_shapes(&self.shapes)?;
        validate_passes(&self.passes)?;
        autotune::validate(&self.autotune)
    }
}

/// The directory holding the preset model.toml files (this crate's root).
pub fn presets_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The path of preset `name` (e.g. `"tiny-schnell"`): `<presets_dir>/<name>.toml`.
pub fn preset_path(name: &str) -> PathBuf {
    presets_dir().join(format!("{name}.toml"))
}

/// The names of the pipeline presets shipped in [`presets_dir`]
/// (`crate::pipeline`; architecture `flux-pipeline`).
pub const PIPELINE_PRESETS: [&str; 3] = [
    "flux-schnell-pipeline",
    "flux-dev-pipeline",
    "tiny-schnell-pipeline",
];

/// The names of the model presets shipped in [`presets_dir`].
pub const PRESETS: [&str; 6] = [
    "flux-schnell",
    "flux-dev",
    "flux-vae",
    "tiny-schnell",
    "tiny-dev",
    "tiny-vae",
];

// --- errors -----------------------------------------------------------------

pub(crate) fn parse_error(error: &toml::de::Error, source: &str, origin: &Path) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column) = line_column(source, offset);
    ConfigError::Parse {
        path: origin.to_path_buf(),
        line,
        column,
        message: one_line(error.message()),
    }
}

pub(crate) fn invalid_error(violation: Violation, source: &str, origin: &Path) -> ConfigError {
    let location = locate(source, &violation.field).map(|offset| line_column(source, offset));
    ConfigError::Invalid {
        path: origin.to_path_buf(),
        field: violation.field,
        line: location.map(|(line, _)| line),
        column: location.map(|(_, column)| column),
        message: violation.message,
    }
}

/// Joins the lines of a message into one, trimming each.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(source: &str, mut offset: usize) -> usize {
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Byte offset of the dotted key `field` in `source`, or, when that key is
/// not written there (a missing key), of the nearest enclosing table that is
/// (`shapes.text_tokens` → `[shapes]`).
fn locate(source: &str, field: &str) -> Option<usize> {
    let mut field = field;
    loop {
        if let Some(offset) = key_offset(source, field) {
            return Some(offset);
        }
        field = field.rsplit_once('.')?.0;
    }
}

/// Byte offset of the dotted key `field` (e.g. `transformer.hidden_size`)
/// in `source`, if the key is written there.
fn key_offset(source: &str, field: &str) -> Option<usize> {
    let document = toml_edit::Document::parse(source).ok()?;
    let mut table: &dyn toml_edit::TableLike = document.as_table();
    let mut segments = field.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (key, item) = table.get_key_value(segment)?;
        if segments.peek().is_none() {
            return key.span().map(|span| span.start);
        }
        table = item.as_table_like()?;
    }
    None
}

// --- validation -------------------------------------------------------------

fn validate_model(model: &ModelSection) -> Result<(), Violation> {
    if model.name.trim().is_empty() {
        return Err(Violation::new("model.name", "must not be empty"));
    }
    Ok(())
}

/// The architecture's section (and `shapes.text_tokens` for the
/// transformer) is present, and nothing another architecture needs.
fn validate_sections(cfg: &ModelConfig) -> Result<(), Violation> {
    let arch = cfg.model.architecture;
    let transformer = arch == Architecture::FluxTransformer;
    let present = [
        ("transformer", cfg.transformer.is_some(), transformer),
        (
            "vae",
            cfg.vae.is_some(),
            arch == Architecture::FluxVaeDecoder,
        ),
    ];
    for (section, is_present, wanted) in present {
        if wanted && !is_present {
            return Err(Violation::new(
                "model.architecture",
                format!("[{section}] is required for architecture \"{arch}\""),
            ));
        }
        if is_present && !wanted {
            return Err(Violation::new(
                section,
                format!(
                    "[{section}] is not used by architecture \"{arch}\" (it needs [{}]); \
                     remove it",
                    arch.section()
                ),
            ));
        }
    }
    match (transformer, cfg.shapes.text_tokens.is_some()) {
        (true, false) => Err(Violation::new(
            "shapes.text_tokens",
            format!("is required for architecture \"{arch}\""),
        )),
        (false, true) => Err(Violation::new(
            "shapes.text_tokens",
            format!("is not used by architecture \"{arch}\" (no text input); remove it"),
        )),
        _ => Ok(()),
    }
}

fn validate_vae(v: &VaeConfig) -> Result<(), Violation> {
    at_least_one("vae.in_channels", v.in_channels)?;
    at_least_one("vae.out_channels", v.out_channels)?;
    at_least_one("vae.latent_channels", v.latent_channels)?;
    at_least_one("vae.norm_num_groups", v.norm_num_groups)?;
    check_block_out_channels(&v.block_out_channels, v.norm_num_groups)?;
    check_positive_finite("vae.scaling_factor", v.scaling_factor)?;
    if !v.shift_factor.is_finite() {
        return Err(Violation::new(
            "vae.shift_factor",
            format!("must be finite, got {}", v.shift_factor),
        ));
    }
    Ok(())
}

fn check_block_out_channels(channels: &[usize], groups: usize) -> Result<(), Violation> {
    const FIELD: &str = "vae.block_out_channels";
    if channels.len() != VAE_LEVELS {
        return Err(Violation::new(
            FIELD,
            format!(
                "must list {VAE_LEVELS} levels (FLUX's VAE: latents at 1/{VAE_SCALE} of the \
                 image size), got {}",
                channels.len()
            ),
        ));
    }
    for (index, &width) in channels.iter().enumerate() {
        if width == 0 || width % groups != 0 {
            return Err(Violation::new(
                FIELD,
                format!(
                    "entry {index} is {width}; every level's channels must be a positive \
                     multiple of norm_num_groups ({groups})"
                ),
            ));
        }
    }
    Ok(())
}

fn check_positive_finite(field: &str, value: f32) -> Result<(), Violation> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Violation::new(
            field,
            format!("must be positive and finite, got {value}"),
        ));
    }
    Ok(())
}

fn validate_transformer(t: &TransformerConfig) -> Result<(), Violation> {
    check_patch_size(t.patch_size)?;
    at_least_one("transformer.in_channels", t.in_channels)?;
    if let Some(out_channels) = t.out_channels {
        at_least_one("transformer.out_channels", out_channels)?;
    }
    at_least_one("transformer.attention_head_dim", t.attention_head_dim)?;
    at_least_one("transformer.num_attention_heads", t.num_attention_heads)?;
    at_least_one("transformer.joint_attention_dim", t.joint_attention_dim)?;
    at_least_one("transformer.pooled_projection_dim", t.pooled_projection_dim)?;
    check_hidden_size(t)?;
    check_axes_dims_rope(&t.axes_dims_rope, t.attention_head_dim)?;
    check_mlp_ratio(t.mlp_ratio, t.hidden_size)?;
    check_rope_theta(t.rope_theta)
}

fn validate_passes(p: &PassesConfig) -> Result<(), Violation> {
    for (field, globs) in [
        ("passes.fp8_include", &p.fp8_include),
        ("passes.fp8_exclude", &p.fp8_exclude),
    ] {
        for glob in globs.iter().flatten() {
            if let Err(e) = globset::Glob::new(glob) {
                return Err(Violation::new(
                    field,
                    format!("bad glob `{glob}`: {}", e.kind()),
                ));
            }
        }
    }
    Ok(())
}

fn validate_shapes(s: &ShapesConfig) -> Result<(), Violation> {
    at_least_one("shapes.batch", s.batch)?;
    check_pixels("shapes.height", s.height)?;
    check_pixels("shapes.width", s.width)?;
    if let Some(text_tokens) = s.text_tokens {
        at_least_one("shapes.text_tokens", text_tokens)?;
    }
    let rows = s.height / PIXELS_PER_TOKEN;
    let columns = s.width / PIXELS_PER_TOKEN;
    if rows.checked_mul(columns).is_none() {
        return Err(Violation::new(
            "shapes.width",
            format!("{rows} × {columns} image tokens overflow"),
        ));
    }
    Ok(())
}

fn at_least_one(field: &str, value: usize) -> Result<(), Violation> {
    if value == 0 {
        return Err(Violation::new(field, "must be at least 1, got 0"));
    }
    Ok(())
}

fn check_patch_size(patch_size: usize) -> Result<(), Violation> {
    if patch_size != 1 {
        return Err(Violation::new(
            "transformer.patch_size",
            format!(
                "patch_size {patch_size} is unsupported: FLUX.1 packs 2×2 latent patches \
                 before the transformer, so patch_size must be 1"
            ),
        ));
    }
    Ok(())
}

fn check_hidden_size(t: &TransformerConfig) -> Result<(), Violation> {
    let (heads, head_dim) = (t.num_attention_heads, t.attention_head_dim);
    let product = heads.checked_mul(head_dim);
    if product == Some(t.hidden_size) {
        return Ok(());
    }
    let product = product.map_or_else(|| "overflows".to_owned(), |p| p.to_string());
    Err(Violation::new(
        "transformer.hidden_size",
        format!(
            "num_attention_heads ({heads}) × attention_head_dim ({head_dim}) = {product}, \
             but hidden_size is {}",
            t.hidden_size
        ),
    ))
}

fn check_axes_dims_rope(axes: &[usize], head_dim: usize) -> Result<(), Violation> {
    const FIELD: &str = "transformer.axes_dims_rope";
    if axes.is_empty() {
        return Err(Violation::new(
            FIELD,
            "must list at least one rotary axis width",
        ));
    }
    for (index, &width) in axes.iter().enumerate() {
        if width == 0 || width % 2 != 0 {
            return Err(Violation::new(
                FIELD,
                format!(
                    "entry {index} is {width}; every axis width must be even and positive \
                     (rotary embeddings rotate pairs of features)"
                ),
            ));
        }
    }
    let sum = axes
        .iter()
        .try_fold(0usize, |sum, &width| sum.checked_add(width));
    if sum != Some(head_dim) {
        let sum = sum.map_or_else(|| "overflows".to_owned(), |s| s.to_string());
        return Err(Violation::new(
            FIELD,
            format!("axis widths {axes:?} sum to {sum}, but attention_head_dim is {head_dim}"),
        ));
    }
    Ok(())
}

fn check_mlp_ratio(mlp_ratio: f32, hidden_size: usize) -> Result<(), Violation> {
    const FIELD: &str = "transformer.mlp_ratio";
    if !(mlp_ratio.is_finite() && mlp_ratio > 0.0) {
        return Err(Violation::new(
            FIELD,
            format!("must be positive and finite, got {mlp_ratio}"),
        ));
    }
    let width = hidden_size as f64 * f64::from(mlp_ratio);
    if width.fract() != 0.0 {
        return Err(Violation::new(
            FIELD,
            format!(
                "hidden_size ({hidden_size}) × mlp_ratio ({mlp_ratio}) = {width}, \
                 which is not a whole number of MLP features"
            ),
        ));
    }
    Ok(())
}

fn check_rope_theta(rope_theta: f32) -> Result<(), Violation> {
    check_positive_finite("transformer.rope_theta", rope_theta)
}

fn check_pixels(field: &str, pixels: usize) -> Result<(), Violation> {
    if pixels == 0 || pixels % PIXELS_PER_TOKEN != 0 {
        return Err(Violation::new(
            field,
            format!(
                "must be a multiple of {PIXELS_PER_TOKEN} (VAE ×8 and 2×2 latent packing) \
                 and positive, got {pixels}"
            ),
        ));
    }
    Ok(())
}
