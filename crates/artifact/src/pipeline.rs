//! `pipeline.json`: the denoising loop of a compiled text-to-image pipeline,
//! everything about it that is fixed at compile time.
//!
//! A pipeline artifact is a directory with two ordinary artifacts,
//! `transformer/` and `vae/` (and with hoisted conditioning a third,
//! `conditioning/`), and this file. It holds the scheduler's
//! numbers (sigmas, the transformer's `timestep` input per step, the
//! guidance input), the latent geometry, the VAE's latent scaling, the
//! position-id tables and the names of the sub-models' inputs and outputs,
//! so the runtime needs nothing of the compiler to run the loop.
//! [`PipelineSpec::validate`] checks it is self-consistent; the runtime
//! then checks it against the artifacts' buffers.

use serde::{Deserialize, Serialize};

use crate::ElemType;

/// The `pipeline.json` format this crate reads and writes; bumped on every
/// incompatible change (independent of the artifacts' `FORMAT_VERSION`).
pub const PIPELINE_FORMAT_VERSION: u32 = 2;

/// The file name of the spec inside a pipeline directory.
pub const PIPELINE_FILE: &str = "pipeline.json";
/// The transformer's artifact directory inside a pipeline directory.
pub const TRANSFORMER_DIR: &str = "transformer";
/// The VAE decoder's artifact directory inside a pipeline directory.
pub const VAE_DIR: &str = "vae";
/// The conditioning's artifact directory inside a pipeline directory
/// (with [`PipelineSpec::conditioning`]).
pub const CONDITIONING_DIR: &str = "conditioning";

/// The unpacked latent tensor `[batch, channels, height, width]` (diffusers'
/// layout before `_pack_latents`); packed, it is `[batch, (height/2)·(width/2),
/// 4·channels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatentShape {
    /// Images per run.
    pub batch: u64,
    /// Latent channels (FLUX.1: 16).
    pub channels: u64,
    /// Latent rows (pixels / 8; even).
    pub height: u64,
    /// Latent columns (pixels / 8; even).
    pub width: u64,
}

impl LatentShape {
    /// Packed image tokens per image: `(height/2)·(width/2)`.
    pub fn tokens(&self) -> u64 {
        (self.height / 2) * (self.width / 2)
    }

    /// Elements of the whole latent tensor.
    pub fn elements(&self) -> u64 {
        self.batch * self.channels * self.height * self.width
    }

    /// The packed shape `[batch, tokens, 4·channels]`.
    pub fn packed(&self) -> [u64; 3] {
        [self.batch, self.tokens(), 4 * self.channels]
    }
}

/// The transformer's input and output names the loop drives. With
/// [`PipelineSpec::conditioning`], `pooled_projections`, `timestep` and
/// `guidance` are the conditioning artifact's inputs instead (`timestep` and
/// `guidance` then `[N·B]`, every step's, step-major).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformerNames {
    /// Packed latents `[B, tokens, 4C]`.
    pub hidden_states: String,
    /// Text embeddings `[B, T, joint_attention_dim]`.
    pub encoder_hidden_states: String,
    /// Pooled embedding `[B, pooled_projection_dim]`.
    pub pooled_projections: String,
    /// `[B]`: the step's timestep / 1000.
    pub timestep: String,
    /// `[B]`: the guidance scale (dev), absent for schnell.
    pub guidance: Option<String>,
    /// `[tokens, 3]` image position ids.
    pub img_ids: String,
    /// `[T, 3]` text position ids.
    pub txt_ids: String,
    /// The velocity `[B, tokens, 4C]`.
    pub output: String,
}

/// Conditioning hoisted out of the loop: `conditioning/` computes every
/// step's modulation vectors once per run (from every step's timestep, the
/// guidance and the pooled embedding), and before step i the loop copies
/// rows `i·B .. (i+1)·B` of its output into the transformer's input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoistedConditioning {
    /// The conditioning artifact's output `[N·B, width]`.
    pub output: String,
    /// The transformer's input `[B, width]`.
    pub modulation: String,
    /// Columns of both.
    pub width: u64,
}

/// The VAE decoder's input and output names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaeNames {
    /// Channels-last latents `[B, H, W, C]`.
    pub latents: String,
    /// Channels-last image `[B, 8H, 8W, 3]`.
    pub output: String,
}

/// `pipeline.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// [`PIPELINE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// `[model] name` of the pipeline's model.toml.
    pub name: String,
    /// The scheduler configuration, in words (`schnell`, `dev`).
    pub scheduler: String,
    /// Denoising steps N.
    pub steps: u32,
    /// `mu` of the dynamic shift (computed for every model; only dev uses it).
    pub mu: f64,
    /// The scheduler's sigmas: N shifted values and a final 0.
    pub sigmas: Vec<f32>,
    /// The transformer's `timestep` input at each of the N steps, already
    /// rounded to the model dtype as the pipeline rounds it.
    pub timesteps: Vec<f32>,
    /// The transformer's `guidance` input (dev), rounded to the model dtype.
    pub guidance: Option<f32>,
    /// The dtype the latents are kept in between steps (the transformer's).
    pub latent_dtype: ElemType,
    /// The unpacked latent shape.
    pub latent: LatentShape,
    /// Image size in pixels: `[height, width, channels]`.
    pub image: [u64; 3],
    /// Text tokens T of the prompt embeddings.
    pub text_tokens: u64,
    /// Width of the prompt embeddings (T5: 4096).
    pub joint_attention_dim: u64,
    /// Width of the pooled embedding (CLIP: 768).
    pub pooled_projection_dim: u64,
    /// The VAE decodes `latents / scaling_factor + shift_factor`.
    pub vae_scaling_factor: f32,
    /// See `vae_scaling_factor`.
    pub vae_shift_factor: f32,
    /// Image position ids, `[tokens, 3]` row-major: token `r·(W/2) + c` is
    /// `(0, r, c)`.
    pub img_ids: Vec<f32>,
    /// Text position ids, `[T, 3]` (zeros).
    pub txt_ids: Vec<f32>,
    /// The transformer's bindings.
    pub transformer: TransformerNames,
    /// The VAE decoder's bindings.
    pub vae: VaeNames,
    /// Conditioning computed once per run (`conditioning/`), or `None`: the
    /// transformer computes it each step.
    pub conditioning: Option<HoistedConditioning>,
}

/// What is wrong with a [`PipelineSpec`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid pipeline spec: {0}")]
pub struct PipelineError(pub String);

impl PipelineSpec {
    /// One line for logs and `fluxc check`: `pipeline `NAME`: 4 schnell
    /// steps, latents 16x128x128 (channels x height x width), image
    /// 1024x1024 (width x height)`.
    pub fn summary(&self) -> String {
        format!(
            "pipeline `{}`: {} {} steps, latents {}x{}x{} (channels x height x width), image \
             {}x{} (width x height)",
            self.name,
            self.steps,
            self.scheduler,
            self.latent.channels,
            self.latent.height,
            self.latent.width,
            self.image[1],
            self.image[0]
        )
    }

    /// `σ_{i+1} − σ_i` in f32 for the N steps (all ≤ 0): step i's Euler
    /// update is `x ← x + dt[i]·v`.
    pub fn dt(&self) -> Vec<f32> {
        self.sigmas.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Checks the spec is self-consistent: the version, N ≥ 1 with N + 1
    /// sigmas (finite, in `[0, 1]`, non-increasing, the last 0) and N
    /// timesteps, a finite guidance exactly when the transformer takes one,
    /// a latent shape with even non-zero sides, an image 8× the latents,
    /// id tables of the right sizes, a positive scaling factor, and
    /// non-empty names.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let fail = |m: String| Err(PipelineError(m));
        if self.format_version != PIPELINE_FORMAT_VERSION {
            return fail(format!(
                "format version {} (this fluxc reads {PIPELINE_FORMAT_VERSION}): recompile the pipeline",
                self.format_version
            ));
        }
        let n = self.steps as usize;
        if n == 0 {
            return fail("steps must be at least 1".into());
        }
        if self.sigmas.len() != n + 1 {
            return fail(format!(
                "{} sigmas for {n} steps (need N + 1 = {})",
                self.sigmas.len(),
                n + 1
            ));
        }
        if self.timesteps.len() != n {
            return fail(format!("{} timesteps for {n} steps", self.timesteps.len()));
        }
        if let Some((i, s)) = self
            .sigmas
            .iter()
            .enumerate()
            .find(|(_, s)| !s.is_finite() || !(0.0..=1.0).contains(*s))
        {
            return fail(format!("sigma {i} = {s} is not in [0, 1]"));
        }
        if self.sigmas.windows(2).any(|w| w[1] > w[0]) {
            return fail("sigmas must not increase".into());
        }
        if self.sigmas[n] != 0.0 {
            return fail(format!("the last sigma must be 0, got {}", self.sigmas[n]));
        }
        if let Some((i, t)) = self
            .timesteps
            .iter()
            .enumerate()
            .find(|(_, t)| !t.is_finite())
        {
            return fail(format!("timestep {i} = {t} is not finite"));
        }
        match (&self.guidance, &self.transformer.guidance) {
            (Some(g), Some(_)) if !g.is_finite() => {
                return fail(format!("guidance {g} is not finite"))
            }
            (Some(_), None) => {
                return fail("a guidance value but no transformer `guidance` input".into())
            }
            (None, Some(name)) => {
                return fail(format!(
                    "the transformer takes `{name}` but the spec has no guidance value"
                ))
            }
            _ => {}
        }
        if !matches!(
            self.latent_dtype,
            ElemType::F32 | ElemType::Bf16 | ElemType::F16
        ) {
            return fail(format!(
                "latent dtype {:?} (f32, bf16 or f16)",
                self.latent_dtype
            ));
        }
        let l = &self.latent;
        if l.batch == 0 || l.channels == 0 || l.height == 0 || l.width == 0 {
            return fail(format!("latent shape {l:?} has a zero dimension"));
        }
        if l.height % 2 != 0 || l.width % 2 != 0 {
            return fail(format!(
                "latent {}x{} must have even sides (2x2 packing)",
                l.height, l.width
            ));
        }
        if self.image[0] != 8 * l.height || self.image[1] != 8 * l.width || self.image[2] == 0 {
            return fail(format!(
                "image {:?} is not 8x the {}x{} latents",
                self.image, l.height, l.width
            ));
        }
        if self.text_tokens == 0 || self.joint_attention_dim == 0 || self.pooled_projection_dim == 0
        {
            return fail("text_tokens and the embedding widths must be positive".into());
        }
        if self.img_ids.len() as u64 != 3 * l.tokens() {
            return fail(format!(
                "img_ids has {} values, [{}, 3] needs {}",
                self.img_ids.len(),
                l.tokens(),
                3 * l.tokens()
            ));
        }
        if self.txt_ids.len() as u64 != 3 * self.text_tokens {
            return fail(format!(
                "txt_ids has {} values, [{}, 3] needs {}",
                self.txt_ids.len(),
                self.text_tokens,
                3 * self.text_tokens
            ));
        }
        if !self.vae_scaling_factor.is_finite() || self.vae_scaling_factor <= 0.0 {
            return fail(format!(
                "vae_scaling_factor {} must be positive and finite",
                self.vae_scaling_factor
            ));
        }
        if !self.vae_shift_factor.is_finite() {
            return fail("vae_shift_factor must be finite".into());
        }
        let t = &self.transformer;
        let names = [
            &t.hidden_states,
            &t.encoder_hidden_states,
            &t.pooled_projections,
            &t.timestep,
            &t.img_ids,
            &t.txt_ids,
            &t.output,
            &self.vae.latents,
            &self.vae.output,
        ];
        if names.iter().any(|s| s.is_empty()) || t.guidance.as_deref() == Some("") {
            return fail("an input or output name is empty".into());
        }
        if let Some(c) = &self.conditioning {
            if c.output.is_empty() || c.modulation.is_empty() {
                return fail("a conditioning name is empty".into());
            }
            if c.width == 0 {
                return fail("the conditioning width must be positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PipelineSpec {
        PipelineSpec {
            format_version: PIPELINE_FORMAT_VERSION,
            name: "p".into(),
            scheduler: "schnell".into(),
            steps: 2,
            mu: 0.5,
            sigmas: vec![1.0, 0.5, 0.0],
            timesteps: vec![1.0, 0.5],
            guidance: None,
            latent_dtype: ElemType::F32,
            latent: LatentShape {
                batch: 1,
                channels: 4,
                height: 4,
                width: 2,
            },
            image: [32, 16, 3],
            text_tokens: 2,
            joint_attention_dim: 8,
            pooled_projection_dim: 4,
            vae_scaling_factor: 0.5,
            vae_shift_factor: 0.1,
            img_ids: vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            txt_ids: vec![0.0; 6],
            transformer: TransformerNames {
                hidden_states: "hidden_states".into(),
                encoder_hidden_states: "encoder_hidden_states".into(),
                pooled_projections: "pooled_projections".into(),
                timestep: "timestep".into(),
                guidance: None,
                img_ids: "img_ids".into(),
                txt_ids: "txt_ids".into(),
                output: "sample".into(),
            },
            vae: VaeNames {
                latents: "z".into(),
                output: "sample".into(),
            },
            conditioning: Some(HoistedConditioning {
                output: "modulation".into(),
                modulation: "modulation".into(),
                width: 24,
            }),
        }
    }

    #[test]
    fn round_trips_through_json_and_validates() {
        let s = spec();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: PipelineSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.dt(), vec![-0.5, -0.5]);
        assert_eq!(s.latent.packed(), [1, 2, 16]);
    }

    #[test]
    fn rejects_inconsistent_specs() {
        type Break = fn(&mut PipelineSpec);
        let cases: Vec<(Break, &str)> = vec![
            (|s| s.format_version = 99, "format version 99"),
            (|s| s.steps = 0, "at least 1"),
            (|s| s.sigmas = vec![1.0, 0.0], "2 sigmas for 2 steps"),
            (|s| s.timesteps.pop().map(drop).unwrap_or(()), "1 timesteps"),
            (|s| s.sigmas = vec![1.0, 1.5, 0.0], "not in [0, 1]"),
            (|s| s.sigmas = vec![0.5, 1.0, 0.0], "must not increase"),
            (|s| s.sigmas = vec![1.0, 0.5, 0.25], "last sigma"),
            (|s| s.guidance = Some(3.5), "no transformer `guidance`"),
            (
                |s| s.transformer.guidance = Some("guidance".into()),
                "no guidance value",
            ),
            (|s| s.latent.width = 3, "even sides"),
            (|s| s.image = [32, 32, 3], "not 8x"),
            (|s| s.img_ids.pop().map(drop).unwrap_or(()), "img_ids has 5"),
            (|s| s.txt_ids.clear(), "txt_ids has 0"),
            (|s| s.vae_scaling_factor = 0.0, "vae_scaling_factor"),
            (|s| s.latent_dtype = ElemType::I32, "latent dtype"),
            (|s| s.vae.latents.clear(), "name is empty"),
            (
                |s| s.conditioning.as_mut().unwrap().width = 0,
                "width must be positive",
            ),
            (
                |s| s.conditioning.as_mut().unwrap().output.clear(),
                "conditioning name is empty",
            ),
        ];
        for (break_it, message) in cases {
            let mut s = spec();
            break_it(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(message), "{err} does not say `{message}`");
        }
    }
}
