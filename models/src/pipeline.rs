//! Pipeline model.toml files (`[model] architecture = "flux-pipeline"`): a
//! transformer model.toml, a VAE decoder model.toml and the denoising loop
//! that drives them, and the [`PipelineSpec`] (`pipeline.json`) computed from
//! them at compile time with [`crate::scheduler`].
//!
//! ```toml
//! [model]
//! name = "flux-schnell-pipeline"
//! architecture = "flux-pipeline"
//!
//! [pipeline]
//! transformer = "flux-schnell.toml"   # relative to this file
//! vae = "flux-vae.toml"
//! scheduler = "schnell"               # or "dev" (dynamic shift with mu)
//! steps = 4
//! # guidance_scale = 3.5              # required exactly when the transformer has guidance_embeds
//! # hoist_conditioning = true         # default: the modulation vectors of
//! #                                   # every step computed once per run
//!
//! [shapes]                            # overrides both sub-models' shapes
//! height = 1024
//! width = 1024
//! text_tokens = 256                   # optional: else the transformer's
//! ```
//!
//! `models/README.md` documents the keys. Errors are [`ConfigError`]s at the
//! offending key of the pipeline file; a broken sub-model file is reported
//! at its own path.

use std::fs;
use std::path::{Path, PathBuf};

use fluxc_artifact::{
    ElemType, HoistedConditioning, LatentShape, PipelineSpec, TransformerNames, VaeNames,
    CONDITIONING_DIR, PIPELINE_FORMAT_VERSION, TRANSFORMER_DIR, VAE_DIR,
};
use serde::Deserialize;

use crate::config::{
    invalid_error, parse_error, Architecture, ConfigError, ModelConfig, ModelDType, Part, Violation,
};
use crate::scheduler::{
    guidance_input, image_seq_len, latent_image_ids, latent_shape, text_ids, FlowMatchEuler,
    TorchDevice, MAX_STEPS,
};

/// The `[model] architecture` of a pipeline file.
pub const PIPELINE_ARCHITECTURE: &str = "flux-pipeline";

/// A pipeline file as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    model: PipelineModel,
    pipeline: PipelineSection,
    shapes: PipelineShapes,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineModel {
    name: String,
    architecture: String,
}

/// `[pipeline]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    transformer: PathBuf,
    vae: PathBuf,
    scheduler: SchedulerKind,
    steps: usize,
    #[serde(default)]
    guidance_scale: Option<f64>,
    #[serde(default = "yes")]
    hoist_conditioning: bool,
}

fn yes() -> bool {
    true
}

/// `[shapes]` of a pipeline file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineShapes {
    #[serde(default)]
    batch: Option<usize>,
    height: usize,
    width: usize,
    #[serde(default)]
    text_tokens: Option<usize>,
}

/// `[pipeline] scheduler`: which release's scheduler config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// FLUX.1-schnell: no shift.
    Schnell,
    /// FLUX.1-dev: dynamic exponential shift with `mu`.
    Dev,
}

impl SchedulerKind {
    /// The name in a pipeline file.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Schnell => "schnell",
            SchedulerKind::Dev => "dev",
        }
    }

    fn scheduler(self) -> FlowMatchEuler {
        match self {
            SchedulerKind::Schnell => FlowMatchEuler::schnell(),
            SchedulerKind::Dev => FlowMatchEuler::dev(),
        }
    }
}

/// A loaded, validated pipeline file: its two sub-models with the
/// pipeline's shapes applied, and the loop's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// `[model] name`.
    pub name: String,
    /// The transformer's model.toml, resolved against the pipeline file.
    pub transformer_path: PathBuf,
    /// The transformer, with the pipeline's `[shapes]`.
    pub transformer: ModelConfig,
    /// The VAE decoder's model.toml, resolved against the pipeline file.
    pub vae_path: PathBuf,
    /// The VAE decoder, with the pipeline's height, width and batch.
    pub vae: ModelConfig,
    /// The scheduler's configuration.
    pub scheduler: SchedulerKind,
    /// Denoising steps.
    pub steps: usize,
    /// The guidance scale (dev-like transformers only).
    pub guidance_scale: Option<f64>,
    /// Compute every step's conditioning (temb and the modulation vectors)
    /// once per run in its own artifact (`flux::build_conditioning`); the
    /// transformer then takes them as input (`flux::build_transformer_step`).
    pub hoist_conditioning: bool,
}

/// Whether the TOML text declares `[model] architecture = "flux-pipeline"`
/// (text that does not parse is not a pipeline; the model.toml parser
/// reports it).
pub fn is_pipeline_source(source: &str) -> bool {
    let Ok(table) = source.parse::<toml::Table>() else {
        return false;
    };
    table
        .get("model")
        .and_then(|m| m.get("architecture"))
        .and_then(|a| a.as_str())
        == Some(PIPELINE_ARCHITECTURE)
}

/// Whether the file at `path` is a pipeline file (false when unreadable:
/// the caller's load reports that).
pub fn is_pipeline_file(path: &Path) -> bool {
    fs::read_to_string(path)
        .map(|s| is_pipeline_source(&s))
        .unwrap_or(false)
}

impl PipelineConfig {
    /// Reads and validates the pipeline file at `path` and the two
    /// model.toml files it names.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let source = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: PipelineFile =
            toml::from_str(&source).map_err(|e| parse_error(&e, &source, path))?;
        let invalid = |field: &str, message: String| {
            invalid_error(Violation::new(field, message), &source, path)
        };
        if file.model.architecture != PIPELINE_ARCHITECTURE {
            return Err(invalid(
                "model.architecture",
                format!(
                    "a pipeline file has architecture \"{PIPELINE_ARCHITECTURE}\", got \"{}\"",
                    file.model.architecture
                ),
            ));
        }
        if file.model.name.trim().is_empty() {
            return Err(invalid("model.name", "must not be empty".into()));
        }
        let p = &file.pipeline;
        if p.steps == 0 || p.steps > MAX_STEPS {
            return Err(invalid(
                "pipeline.steps",
                format!("must be in 1..={MAX_STEPS}, got {}", p.steps),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        let transformer_path = dir.join(&p.transformer);
        let vae_path = dir.join(&p.vae);
        let mut transformer = ModelConfig::load(&transformer_path)?;
        let mut vae = ModelConfig::load(&vae_path)?;
        for (key, cfg, want) in [
            (
                "pipeline.transformer",
                &transformer,
                Architecture::FluxTransformer,
            ),
            ("pipeline.vae", &vae, Architecture::FluxVaeDecoder),
        ] {
            if cfg.model.architecture != want {
                return Err(invalid(
                    key,
                    format!(
                        "`{}` is a \"{}\" model; this key needs \"{want}\"",
                        dir.join(if key.ends_with("vae") {
                            &p.vae
                        } else {
                            &p.transformer
                        })
                        .display(),
                        cfg.model.architecture
                    ),
                ));
            }
        }
        let s = &file.shapes;
        for cfg in [&mut transformer, &mut vae] {
            cfg.shapes.height = s.height;
            cfg.shapes.width = s.width;
            if let Some(batch) = s.batch {
                cfg.shapes.batch = batch;
            }
        }
        if let Some(t) = s.text_tokens {
            transformer.shapes.text_tokens = Some(t);
        }
        for cfg in [&transformer, &vae] {
            cfg.validate().map_err(|v| {
                let field = v.field.clone();
                invalid(
                    if field.starts_with("shapes.") {
                        &field
                    } else {
                        "shapes"
                    },
                    format!("with this pipeline's shapes, `{}`: {v}", cfg.model.name),
                )
            })?;
        }
        let t = transformer
            .transformer()
            .map_err(|e| invalid("pipeline.transformer", e.to_string()))?;
        let v = vae
            .vae()
            .map_err(|e| invalid("pipeline.vae", e.to_string()))?;
        if t.in_channels != 4 * v.latent_channels || t.out_channels() != t.in_channels {
            return Err(invalid(
                "pipeline.vae",
                format!(
                    "the transformer's tokens have {} input and {} output features, but 2x2 patches \
                     of the VAE's {} latent channels have {}",
                    t.in_channels,
                    t.out_channels(),
                    v.latent_channels,
                    4 * v.latent_channels
                ),
            ));
        }
        if transformer.model.dtype != vae.model.dtype {
            return Err(invalid(
                "pipeline.vae",
                format!(
                    "the VAE's dtype {:?} differs from the transformer's {:?} (the pipeline keeps \
                     one latent dtype)",
                    vae.model.dtype, transformer.model.dtype
                ),
            ));
        }
        match (t.guidance_embeds, p.guidance_scale) {
            (true, None) => {
                return Err(invalid(
                    "pipeline.guidance_scale",
                    "is required: the transformer has a guidance embedding (FLUX.1-dev uses 3.5)"
                        .into(),
                ))
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "pipeline.guidance_scale",
                    "the transformer has no guidance embedding; remove it".into(),
                ))
            }
            (true, Some(g)) if !g.is_finite() => {
                return Err(invalid(
                    "pipeline.guidance_scale",
                    format!("must be finite, got {g}"),
                ))
            }
            _ => {}
        }
        let config = PipelineConfig {
            name: file.model.name.clone(),
            transformer_path,
            transformer,
            vae_path,
            vae,
            scheduler: p.scheduler,
            steps: p.steps,
            guidance_scale: p.guidance_scale,
            hoist_conditioning: p.hoist_conditioning,
        };
        config
            .spec()
            .map_err(|e| invalid("pipeline", format!("computing the schedule: {e}")))?;
        Ok(config)
    }

    /// What a compile of this pipeline writes, by directory: every step's
    /// conditioning and the per-step transformer (with `hoist_conditioning`)
    /// or the whole transformer, then the VAE decoder.
    pub fn artifacts(&self) -> Vec<(&'static str, ModelConfig)> {
        let mut artifacts = if self.hoist_conditioning {
            vec![
                (CONDITIONING_DIR, self.conditioning_model()),
                (TRANSFORMER_DIR, self.step_model()),
            ]
        } else {
            vec![(TRANSFORMER_DIR, self.transformer.clone())]
        };
        artifacts.push((VAE_DIR, self.vae.clone()));
        artifacts
    }

    /// The transformer's part computing every step's conditioning at once
    /// (with `hoist_conditioning`; [`crate::flux::build_conditioning`]).
    pub fn conditioning_model(&self) -> ModelConfig {
        let mut model =
            self.transformer_part(Part::Conditioning { steps: self.steps }, "conditioning");
        // Its linears share one input and each reads its weight once as
        // they are: compiled without the q/k/v fusion, as measured on the
        // H200 (the fusion would now stack all of them into one product; an
        // earlier e-graph stacked 32.7 GB of overlapping copies out of
        // 6.5 GB). One product is a launch-count gain worth measuring.
        model.passes.fuse_qkv = false;
        // It runs once per image: a one-row product (a one-step pipeline's)
        // keeps its weights in bf16 rather than trade accuracy for a once
        // faster read.
        model.passes.fp8_one_row = false;
        model
    }

    /// The transformer's per-step part, which takes its step's conditioning
    /// as input (with `hoist_conditioning`;
    /// [`crate::flux::build_transformer_step`]).
    pub fn step_model(&self) -> ModelConfig {
        self.transformer_part(Part::Step, "step")
    }

    fn transformer_part(&self, part: Part, suffix: &str) -> ModelConfig {
        let mut model = self.transformer.clone();
        model.part = part;
        model.model.name = format!("{}-{suffix}", model.model.name);
        model
    }

    /// The `pipeline.json` of this pipeline: the schedule of
    /// `FluxPipeline` on CUDA tensors ([`TorchDevice::Cuda`]) at the
    /// pipeline's image size, in the transformer's dtype.
    pub fn spec(&self) -> Result<PipelineSpec, String> {
        let err = |e: crate::scheduler::SchedulerError| e.to_string();
        let t = self.transformer.transformer().map_err(|e| e.to_string())?;
        let v = self.vae.vae().map_err(|e| e.to_string())?;
        let shapes = &self.transformer.shapes;
        let dtype = self.transformer.model.dtype.ir();
        let (h, w) = latent_shape(shapes.height, shapes.width).map_err(err)?;
        let seq = image_seq_len(shapes.height, shapes.width).map_err(err)?;
        let schedule = self
            .scheduler
            .scheduler()
            .schedule(self.steps, seq)
            .map_err(err)?;
        let timesteps = schedule
            .transformer_timesteps(dtype, TorchDevice::Cuda)
            .map_err(err)?;
        let guidance = self
            .guidance_scale
            .map(|g| guidance_input(g, dtype))
            .transpose()
            .map_err(err)?;
        let text_tokens = self.transformer.text_tokens().map_err(|e| e.to_string())?;
        let latent_dtype = match self.transformer.model.dtype {
            ModelDType::F32 => ElemType::F32,
            ModelDType::Bf16 => ElemType::Bf16,
            ModelDType::F16 => ElemType::F16,
        };
        let u = |x: usize| x as u64;
        Ok(PipelineSpec {
            format_version: PIPELINE_FORMAT_VERSION,
            name: self.name.clone(),
            scheduler: self.scheduler.name().into(),
            steps: u32::try_from(self.steps).map_err(|_| "too many steps".to_string())?,
            mu: schedule.mu,
            sigmas: schedule.sigmas.clone(),
            timesteps,
            guidance,
            latent_dtype,
            latent: LatentShape {
                batch: u(shapes.batch),
                channels: u(v.latent_channels),
                height: u(h),
                width: u(w),
            },
            image: [u(8 * h), u(8 * w), u(v.out_channels)],
            text_tokens: u(text_tokens),
            joint_attention_dim: u(t.joint_attention_dim),
            pooled_projection_dim: u(t.pooled_projection_dim),
            vae_scaling_factor: v.scaling_factor,
            vae_shift_factor: v.shift_factor,
            img_ids: latent_image_ids(h / 2, w / 2).map_err(err)?,
            txt_ids: text_ids(text_tokens).map_err(err)?,
            transformer: TransformerNames {
                hidden_states: "hidden_states".into(),
                encoder_hidden_states: "encoder_hidden_states".into(),
                pooled_projections: "pooled_projections".into(),
                timestep: "timestep".into(),
                guidance: t.guidance_embeds.then(|| "guidance".into()),
                img_ids: "img_ids".into(),
                txt_ids: "txt_ids".into(),
                output: "sample".into(),
            },
            vae: VaeNames {
                latents: "z".into(),
                output: "sample".into(),
            },
            conditioning: self.hoist_conditioning.then(|| HoistedConditioning {
                output: "modulation".into(),
                modulation: "modulation".into(),
                width: u(crate::flux::modulation_width(t)),
            }),
        })
    }
}
