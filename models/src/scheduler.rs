//! The host side of FLUX.1's denoising loop: the flow-matching Euler
//! schedule, the latent packing, and the position-id tables, computed exactly
//! as diffusers 0.42's `FluxPipeline` computes them, so that fluxc can fix
//! them at compile time instead of running Python next to the GPU.
//!
//! # What the pipeline does
//!
//! `FluxPipeline.__call__` with N steps at an image of `height × width`
//! pixels:
//!
//! 1. latents are `[B, 16, H, W]` with `H = 2·⌊height/16⌋`, `W = 2·⌊width/16⌋`
//!    ([`latent_shape`]), packed into `[B, (H/2)(W/2), 64]` tokens
//!    ([`pack_latents`]); `image_seq_len = (H/2)(W/2)` ([`image_seq_len`]);
//!    each token's position id is `(0, row, col)` ([`latent_image_ids`]);
//! 2. `sigmas = np.linspace(1.0, 1/N, N)`;
//! 3. `mu = calculate_shift(image_seq_len, …)`, linear in the sequence length
//!    ([`calculate_shift`]);
//! 4. the scheduler (`FlowMatchEulerDiscreteScheduler.set_timesteps`) shifts
//!    the sigmas — statically for schnell (`shift = 1`, the identity),
//!    dynamically with `mu` for dev — sets `timesteps = σ·1000` and appends a
//!    final sigma 0 ([`FlowMatchEuler::schedule`]);
//! 5. step i calls the transformer with `timestep = t_i / 1000`
//!    ([`Schedule::transformer_timesteps`]) and `guidance = guidance_scale`
//!    (dev only; [`guidance_input`]), then does the Euler step
//!    `x ← x + (σ_{i+1} − σ_i)·v` ([`Schedule::dt`], [`Schedule::euler_step`]).
//!
//! # Precision, step by step
//!
//! Every number here is meant to be bit-identical to what diffusers computes,
//! so each step uses the precision diffusers uses:
//!
//! | value | diffusers computes it in | here |
//! | --- | --- | --- |
//! | `mu` | Python floats (f64) | f64, same operation order |
//! | `np.linspace(1.0, 1/N, N)` | numpy f64: `i·step + 1`, `step = (1/N − 1)/(N − 1)`, last element set to `1/N` | f64, same formula |
//! | sigmas into the scheduler | `np.array(sigmas).astype(np.float32)`: rounded to f32 | `as f32` (round to nearest even) |
//! | static shift `shift·σ / (1 + (shift−1)·σ)` | numpy f32: `shift` and `shift−1` (f64) rounded to f32, then each `*`, `+`, `/` rounded to f32 | the same f32 operations |
//! | exponential shift `e^μ / (e^μ + (1/σ − 1)^1)` | numpy f32: `math.exp(mu)` in f64 rounded to f32; `1/σ`, `−1`, `+`, `/` each rounded to f32; `x**1.0` is exact | the same f32 operations (`f64::exp`, then `as f32`) |
//! | shifted sigmas | `torch.from_numpy(...).to(float32)`: already f32, unchanged | f32 |
//! | `timesteps = σ·1000` | torch f32 multiply | f32 multiply |
//! | final sigma 0 | `torch.cat` with an f32 zero | `0.0` |
//! | `dt = σ_{i+1} − σ_i` (in `step`) | torch f32 subtract | f32 subtract |
//! | transformer `timestep` input | `t.to(model dtype) / 1000`: see [`Schedule::transformer_timesteps`] | emulated per dtype and device |
//!
//! The only libm call is `exp(mu)`, in f64 and then rounded to f32; a last-bit
//! difference between two C libraries would have to straddle an f32 rounding
//! boundary to show.
//!
//! # Not covered
//!
//! The scheduler options FLUX.1 does not use (`shift_terminal`, Karras /
//! exponential / beta sigmas, `invert_sigmas`, stochastic sampling, custom
//! timesteps) are not modelled.

use fluxc_ir::DType;

/// Spatial compression of the FLUX.1 VAE (`2^(len(block_out_channels) − 1)`).
pub const VAE_SCALE_FACTOR: usize = 8;

/// Latent channels of FLUX.1 before packing (`in_channels / 4`).
pub const LATENT_CHANNELS: usize = 16;

/// Largest number of steps [`FlowMatchEuler::schedule`] accepts.
pub const MAX_STEPS: usize = 10_000;

/// Largest `image_seq_len` [`FlowMatchEuler::schedule`] accepts
/// (2^20 tokens: a 16384 × 16384 image).
pub const MAX_IMAGE_SEQ_LEN: usize = 1 << 20;

/// Errors of the scheduler and of the latent helpers. None of the functions in
/// this module panics on bad input; they return one of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// `num_steps` is 0 or more than [`MAX_STEPS`].
    #[error("num_steps must be in 1..={max}, got {got}")]
    NumSteps {
        /// The number given.
        got: usize,
        /// [`MAX_STEPS`].
        max: usize,
    },
    /// `image_seq_len` is 0 or more than [`MAX_IMAGE_SEQ_LEN`].
    #[error("image_seq_len must be in 1..={max}, got {got}")]
    ImageSeqLen {
        /// The number given.
        got: usize,
        /// [`MAX_IMAGE_SEQ_LEN`].
        max: usize,
    },
    /// A scheduler parameter is out of range.
    #[error("invalid scheduler parameter `{param}`: {reason}")]
    Config {
        /// The parameter's name, as in diffusers' scheduler config.
        param: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The dynamic shift's `mu` gives no usable shift (`e^mu` overflows or
    /// underflows in f32, or `mu ≤ 0` for the linear shift).
    #[error("mu = {mu} gives no usable {kind} time shift")]
    Mu {
        /// The `mu` computed from the sequence length.
        mu: f64,
        /// `"exponential"` or `"linear"`.
        kind: &'static str,
    },
    /// A shifted sigma came out non-finite or outside `[0, 1]`.
    #[error("shifted sigma {value} at step {index} is not in [0, 1]")]
    Sigma {
        /// The step index.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A step index past the end of the schedule.
    #[error("step {index} is out of range for a {num_steps}-step schedule")]
    StepIndex {
        /// The index given.
        index: usize,
        /// The schedule's number of steps.
        num_steps: usize,
    },
    /// An image size too small for one latent token.
    #[error(
        "image size {height}x{width} has no latent token (each side needs at least 16 pixels)"
    )]
    ImageSize {
        /// Pixel height.
        height: usize,
        /// Pixel width.
        width: usize,
    },
    /// A latent tensor's dimensions or buffer length are inconsistent.
    #[error("latent shape: {0}")]
    Shape(String),
    /// A model dtype the pipeline's timestep arithmetic is not defined for.
    #[error("model dtype {0} is not one of f32, bf16, f16")]
    DType(DType),
}

/// How the dynamic shift maps a sigma (diffusers' `time_shift_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeShiftType {
    /// `σ' = e^μ / (e^μ + (1/σ − 1))` — what FLUX.1-dev uses.
    Exponential,
    /// `σ' = μ / (μ + (1/σ − 1))`.
    Linear,
}

/// The parameters of diffusers' `FlowMatchEulerDiscreteScheduler` that
/// FLUX.1 uses, named as in its `scheduler_config.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowMatchEulerConfig {
    /// Training timesteps; `timesteps = σ · num_train_timesteps`.
    pub num_train_timesteps: u32,
    /// Static shift, used when `use_dynamic_shifting` is false.
    pub shift: f64,
    /// Shift by `mu` from the image's sequence length instead of by `shift`.
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len`.
    pub base_shift: f64,
    /// `mu` at `max_image_seq_len`.
    pub max_shift: f64,
    /// Sequence length where `mu = base_shift`.
    pub base_image_seq_len: usize,
    /// Sequence length where `mu = max_shift`.
    pub max_image_seq_len: usize,
    /// The dynamic shift's formula.
    pub time_shift_type: TimeShiftType,
}

impl FlowMatchEulerConfig {
    /// FLUX.1-schnell's scheduler config: `shift = 1.0`, no dynamic shifting
    /// (the schedule is the unshifted linspace).
    pub const SCHNELL: FlowMatchEulerConfig = FlowMatchEulerConfig {
        num_train_timesteps: 1000,
        shift: 1.0,
        use_dynamic_shifting: false,
        base_shift: 0.5,
        max_shift: 1.15,
        base_image_seq_len: 256,
        max_image_seq_len: 4096,
        time_shift_type: TimeShiftType::Exponential,
    };

    /// FLUX.1-dev's scheduler config: dynamic exponential shifting with `mu`
    /// from 0.5 at 256 tokens to 1.15 at 4096 tokens. (Its config also says
    /// `shift = 3.0`, which dynamic shifting ignores.)
    pub const DEV: FlowMatchEulerConfig = FlowMatchEulerConfig {
        num_train_timesteps: 1000,
        shift: 3.0,
        use_dynamic_shifting: true,
        base_shift: 0.5,
        max_shift: 1.15,
        base_image_seq_len: 256,
        max_image_seq_len: 4096,
        time_shift_type: TimeShiftType::Exponential,
    };

    fn validate(&self) -> Result<(), SchedulerError> {
        let bad = |param, reason: &str| {
            Err(SchedulerError::Config {
                param,
                reason: reason.to_string(),
            })
        };
        if self.num_train_timesteps == 0 {
            return bad("num_train_timesteps", "must be at least 1");
        }
        if !self.shift.is_finite() || self.shift <= 0.0 {
            return bad(
                "shift",
                &format!("must be finite and > 0, got {}", self.shift),
            );
        }
        if !self.base_shift.is_finite() {
            return bad("base_shift", "must be finite");
        }
        if !self.max_shift.is_finite() {
            return bad("max_shift", "must be finite");
        }
        if self.base_image_seq_len == self.max_image_seq_len {
            return bad(
                "max_image_seq_len",
                "must differ from base_image_seq_len (mu is a line through both)",
            );
        }
        Ok(())
    }
}

/// diffusers' `FlowMatchEulerDiscreteScheduler` as `FluxPipeline` drives it,
/// reduced to what can be computed before the loop runs: see
/// [`FlowMatchEuler::schedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowMatchEuler {
    config: FlowMatchEulerConfig,
}

/// Everything the denoising loop needs from the scheduler for N steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `mu` from the image's sequence length. The pipeline computes it for
    /// every model; only dynamic shifting (dev) uses it.
    pub mu: f64,
    /// The N shifted sigmas followed by a final 0 (N + 1 values, from 1.0
    /// down): the scheduler's `sigmas`.
    pub sigmas: Vec<f32>,
    /// `σ_i · 1000` for the N steps: the scheduler's `timesteps`, which the
    /// pipeline iterates over. The transformer receives `timesteps[i] / 1000`,
    /// rounded as [`Schedule::transformer_timesteps`] describes (not exactly
    /// `sigmas[i]`).
    pub timesteps: Vec<f32>,
    /// `σ_{i+1} − σ_i` in f32 (N values, all ≤ 0): step i's Euler update is
    /// `latents ← latents + dt[i] · v` with `v` the transformer's output.
    pub dt: Vec<f32>,
}

/// Where the pipeline's tensors live, which decides how PyTorch divides the
/// timestep by 1000 (see [`Schedule::transformer_timesteps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDevice {
    /// CPU tensors: a correctly rounded division `t / 1000` in f32.
    Cpu,
    /// CUDA tensors: PyTorch's CUDA kernel divides by a Python scalar by
    /// multiplying with its f32 reciprocal, `t · fl(1/1000)`, which can differ
    /// from the division in the last bit.
    Cuda,
}

impl FlowMatchEuler {
    /// The scheduler with FLUX.1-schnell's config ([`FlowMatchEulerConfig::SCHNELL`]).
    pub fn schnell() -> Self {
        FlowMatchEuler {
            config: FlowMatchEulerConfig::SCHNELL,
        }
    }

    /// The scheduler with FLUX.1-dev's config ([`FlowMatchEulerConfig::DEV`]).
    pub fn dev() -> Self {
        FlowMatchEuler {
            config: FlowMatchEulerConfig::DEV,
        }
    }

    /// The scheduler with explicit parameters, checked: `num_train_timesteps`
    /// ≥ 1, `shift` finite and > 0, `base_shift`/`max_shift` finite, and
    /// `base_image_seq_len ≠ max_image_seq_len`.
    pub fn new(config: FlowMatchEulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        Ok(FlowMatchEuler { config })
    }

    /// The scheduler's parameters.
    pub fn config(&self) -> &FlowMatchEulerConfig {
        &self.config
    }

    /// `mu` for an image of `image_seq_len` tokens, as the pipeline computes
    /// it from this scheduler's config ([`calculate_shift`]).
    pub fn mu(&self, image_seq_len: usize) -> Result<f64, SchedulerError> {
        let c = &self.config;
        calculate_shift(
            image_seq_len,
            c.base_image_seq_len,
            c.max_image_seq_len,
            c.base_shift,
            c.max_shift,
        )
    }

    /// The schedule `FluxPipeline` runs for `num_steps` steps on an image of
    /// `image_seq_len` packed tokens (4096 at 1024²; [`image_seq_len`]).
    ///
    /// Errors, rather than panics, on `num_steps` outside `1..=`[`MAX_STEPS`],
    /// `image_seq_len` outside `1..=`[`MAX_IMAGE_SEQ_LEN`], a `mu` whose shift
    /// is not finite, or a shifted sigma outside `[0, 1]`.
    pub fn schedule(
        &self,
        num_steps: usize,
        image_seq_len: usize,
    ) -> Result<Schedule, SchedulerError> {
        if num_steps == 0 || num_steps > MAX_STEPS {
            return Err(SchedulerError::NumSteps {
                got: num_steps,
                max: MAX_STEPS,
            });
        }
        if image_seq_len == 0 || image_seq_len > MAX_IMAGE_SEQ_LEN {
            return Err(SchedulerError::ImageSeqLen {
                got: image_seq_len,
                max: MAX_IMAGE_SEQ_LEN,
            });
        }
        let c = &self.config;
        let mu = self.mu(image_seq_len)?;

        // The pipeline's sigmas: numpy f64 linspace, then the scheduler's
        // `astype(np.float32)`.
        let unshifted = linspace_f64(1.0, 1.0 / num_steps as f64, num_steps);
        let unshifted = unshifted.into_iter().map(|s| s as f32);

        let shift = self.shift_fn(mu)?;
        let mut sigmas = Vec::with_capacity(num_steps + 1);
        for (index, s) in unshifted.enumerate() {
            let value = shift(s);
            if !(0.0..=1.0).contains(&value) {
                return Err(SchedulerError::Sigma { index, value });
            }
            sigmas.push(value);
        }

        let scale = c.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|&s| s * scale).collect();
        sigmas.push(0.0);
        let dt = sigmas.windows(2).map(|w| w[1] - w[0]).collect();
        Ok(Schedule {
            mu,
            sigmas,
            timesteps,
            dt,
        })
    }

    /// The scheduler's shift of one f32 sigma, in numpy's f32 arithmetic:
    /// every Python-float constant is rounded to f32 before the operation.
    fn shift_fn(&self, mu: f64) -> Result<Box<dyn Fn(f32) -> f32>, SchedulerError> {
        let c = &self.config;
        if !c.use_dynamic_shifting {
            let shift = c.shift as f32;
            let shift_m1 = (c.shift - 1.0) as f32;
            return Ok(Box::new(move |s: f32| shift * s / (1.0 + shift_m1 * s)));
        }
        // `(1/σ − 1) ** 1.0` is exact, so the exponent does not appear.
        match c.time_shift_type {
            TimeShiftType::Exponential => {
                let e = mu.exp() as f32;
                if !e.is_finite() || e <= 0.0 {
                    return Err(SchedulerError::Mu {
                        mu,
                        kind: "exponential",
                    });
                }
                Ok(Box::new(move |s: f32| e / (e + (1.0 / s - 1.0))))
            }
            TimeShiftType::Linear => {
                let m = mu as f32;
                if !m.is_finite() || m <= 0.0 {
                    return Err(SchedulerError::Mu { mu, kind: "linear" });
                }
                Ok(Box::new(move |s: f32| m / (m + (1.0 / s - 1.0))))
            }
        }
    }
}

/// diffusers' `calculate_shift`: `mu` on the line through
/// `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)`, evaluated at
/// `image_seq_len` (not clamped), in f64 as Python evaluates it:
/// `m = (max_shift − base_shift) / (max_seq_len − base_seq_len)`,
/// `b = base_shift − m·base_seq_len`, `mu = image_seq_len·m + b`.
///
/// Errors when `base_seq_len == max_seq_len` (Python would raise
/// `ZeroDivisionError`) or the result is not finite.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> Result<f64, SchedulerError> {
    if base_seq_len == max_seq_len {
        return Err(SchedulerError::Config {
            param: "max_image_seq_len",
            reason: "must differ from base_image_seq_len (mu is a line through both)".into(),
        });
    }
    // Python subtracts the two ints exactly, then converts to float.
    let span = (max_seq_len as i128 - base_seq_len as i128) as f64;
    let m = (max_shift - base_shift) / span;
    let b = base_shift - m * base_seq_len as f64;
    let mu = image_seq_len as f64 * m + b;
    if !mu.is_finite() {
        return Err(SchedulerError::Config {
            param: "base_shift/max_shift",
            reason: format!("mu is not finite ({mu})"),
        });
    }
    Ok(mu)
}

/// `np.linspace(start, stop, n)` in f64 as numpy computes it: element i is
/// `i·step + start` with `step = (stop − start)/(n − 1)`, and the last
/// element is `stop` itself. `n ≥ 1`.
fn linspace_f64(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

impl Schedule {
    /// The number of denoising steps N.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The `timestep` values the transformer receives at each step, as the
    /// pipeline computes them: `timestep = t.expand(B).to(dtype)` then
    /// `timestep / 1000`, with `dtype` the model (latents) dtype.
    ///
    /// PyTorch evaluates the division in f32 for f32, bf16 and f16 tensors and
    /// rounds the quotient to `dtype`; on the CPU it divides, on CUDA it
    /// multiplies by the f32 reciprocal of 1000 ([`TorchDevice`]). So the
    /// value is `round(round(t)/1000)` or `round(round(t)·fl(1/1000))`, with
    /// `round` the rounding to `dtype` (the identity for f32). The transformer
    /// then computes `timestep.to(dtype) · 1000` itself (inside the graph).
    ///
    /// Errors for dtypes other than f32, bf16 and f16.
    pub fn transformer_timesteps(
        &self,
        dtype: DType,
        device: TorchDevice,
    ) -> Result<Vec<f32>, SchedulerError> {
        check_model_dtype(dtype)?;
        let inv = 1.0f32 / 1000.0f32;
        Ok(self
            .timesteps
            .iter()
            .map(|&t| {
                let t = dtype.round(t);
                let q = match device {
                    TorchDevice::Cpu => t / 1000.0,
                    TorchDevice::Cuda => t * inv,
                };
                dtype.round(q)
            })
            .collect())
    }

    /// Step `index`'s Euler update on host f32 data, as the scheduler's `step`
    /// does it for f32 tensors: `latents[k] += dt[index] · velocity[k]`, the
    /// product and the sum each rounded to f32 (two PyTorch ops, no fused
    /// multiply-add).
    ///
    /// (With bf16 latents PyTorch forms `dt·v` as a bf16 tensor — the f32
    /// `dt` meets a bf16 `v` — adds it to the latents upcast to f32, and
    /// rounds the sum back to bf16; this function is the f32 reference.)
    pub fn euler_step(
        &self,
        index: usize,
        latents: &mut [f32],
        velocity: &[f32],
    ) -> Result<(), SchedulerError> {
        let dt = *self.dt.get(index).ok_or(SchedulerError::StepIndex {
            index,
            num_steps: self.num_steps(),
        })?;
        if latents.len() != velocity.len() {
            return Err(SchedulerError::Shape(format!(
                "latents have {} values but the velocity has {}",
                latents.len(),
                velocity.len()
            )));
        }
        for (x, &v) in latents.iter_mut().zip(velocity) {
            let update = dt * v;
            *x += update;
        }
        Ok(())
    }
}

fn check_model_dtype(dtype: DType) -> Result<(), SchedulerError> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(SchedulerError::DType(other)),
    }
}

/// The `guidance` input of FLUX.1-dev's transformer for a guidance scale: the
/// pipeline builds `torch.full([1], guidance_scale, dtype=float32)` (the
/// Python float rounded to f32) and the transformer casts it to the model
/// dtype before multiplying by 1000 inside; this returns the value after that
/// cast, which is what the graph's `guidance` input holds.
///
/// Errors for a non-finite scale or a dtype other than f32, bf16 and f16.
pub fn guidance_input(guidance_scale: f64, dtype: DType) -> Result<f32, SchedulerError> {
    check_model_dtype(dtype)?;
    let g = guidance_scale as f32;
    if !g.is_finite() {
        return Err(SchedulerError::Config {
            param: "guidance_scale",
            reason: format!("must be finite in f32, got {guidance_scale}"),
        });
    }
    Ok(dtype.round(g))
}

/// The unpacked latent size `(H, W)` for an image of `height × width` pixels,
/// as `prepare_latents` computes it: `2·⌊height/16⌋ × 2·⌊width/16⌋` (the VAE
/// downsamples by 8 and packing needs even sizes; pixel sizes that are not
/// multiples of 16 are rounded down).
pub fn latent_shape(height: usize, width: usize) -> Result<(usize, usize), SchedulerError> {
    let unit = VAE_SCALE_FACTOR * 2;
    let (h, w) = (2 * (height / unit), 2 * (width / unit));
    if h == 0 || w == 0 {
        return Err(SchedulerError::ImageSize { height, width });
    }
    Ok((h, w))
}

/// The number of packed image tokens for an image of `height × width` pixels:
/// `(H/2)·(W/2)` with `(H, W)` from [`latent_shape`] (4096 at 1024 × 1024).
pub fn image_seq_len(height: usize, width: usize) -> Result<usize, SchedulerError> {
    let (h, w) = latent_shape(height, width)?;
    (h / 2)
        .checked_mul(w / 2)
        .ok_or_else(|| SchedulerError::Shape(format!("{h}x{w} latent overflows usize")))
}

/// The element count of `dims`, or an error naming `what` when a dimension is
/// zero or the product overflows.
fn element_count(what: &str, dims: &[usize]) -> Result<usize, SchedulerError> {
    if dims.contains(&0) {
        return Err(SchedulerError::Shape(format!(
            "{what} has a zero dimension: {dims:?}"
        )));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| SchedulerError::Shape(format!("{what} {dims:?} overflows usize")))
}

/// Checks an unpacked latent size for packing: both sides even and nonzero.
fn check_even(height: usize, width: usize) -> Result<(), SchedulerError> {
    if height % 2 != 0 || width % 2 != 0 {
        return Err(SchedulerError::Shape(format!(
            "latent height and width must be even to pack 2x2 patches, got {height}x{width}"
        )));
    }
    Ok(())
}

/// `_pack_latents`: `[B, C, H, W]` row-major → `[B, (H/2)(W/2), 4C]`.
///
/// Token `r·(W/2) + c` is the 2×2 patch at rows `2r, 2r+1` and columns
/// `2c, 2c+1`; its feature `4·ch + 2·dy + dx` is channel `ch` at row `2r+dy`,
/// column `2c+dx` (diffusers' `view(B, C, H/2, 2, W/2, 2)`,
/// `permute(0, 2, 4, 1, 3, 5)`). `height` and `width` are the latent's (not
/// the image's) and must be even; `latents.len()` must be `B·C·H·W`.
pub fn pack_latents(
    latents: &[f32],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, SchedulerError> {
    check_even(height, width)?;
    let n = element_count("latents [B, C, H, W]", &[batch, channels, height, width])?;
    if latents.len() != n {
        return Err(SchedulerError::Shape(format!(
            "latents [B, C, H, W] = [{batch}, {channels}, {height}, {width}] need {n} values, got {}",
            latents.len()
        )));
    }
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0f32; n];
    for b in 0..batch {
        for ch in 0..channels {
            for y in 0..height {
                for x in 0..width {
                    let src = ((b * channels + ch) * height + y) * width + x;
                    let token = (y / 2) * w2 + x / 2;
                    let feature = 4 * ch + 2 * (y % 2) + x % 2;
                    out[(b * h2 * w2 + token) * 4 * channels + feature] = latents[src];
                }
            }
        }
    }
    Ok(out)
}

/// `_unpack_latents`: `[B, (H/2)(W/2), 4·C]` → `[B, C, H, W]` row-major, the
/// inverse of [`pack_latents`]. `height` and `width` are the unpacked latent's
/// (diffusers derives them from the pixel size: [`latent_shape`]) and must be
/// even; `channels` is C (16 for FLUX.1), so each token has `4·C` features.
pub fn unpack_latents(
    packed: &[f32],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, SchedulerError> {
    check_even(height, width)?;
    let n = element_count("latents [B, C, H, W]", &[batch, channels, height, width])?;
    if packed.len() != n {
        return Err(SchedulerError::Shape(format!(
            "packed latents [B, (H/2)(W/2), 4C] = [{batch}, {}, {}] need {n} values, got {}",
            (height / 2) * (width / 2),
            4 * channels,
            packed.len()
        )));
    }
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0f32; n];
    for b in 0..batch {
        for ch in 0..channels {
            for y in 0..height {
                for x in 0..width {
                    let dst = ((b * channels + ch) * height + y) * width + x;
                    let token = (y / 2) * w2 + x / 2;
                    let feature = 4 * ch + 2 * (y % 2) + x % 2;
                    out[dst] = packed[(b * h2 * w2 + token) * 4 * channels + feature];
                }
            }
        }
    }
    Ok(out)
}

/// `_prepare_latent_image_ids`: the `[rows·cols, 3]` position ids of the
/// packed image tokens, row-major, token `r·cols + c` holding `(0, r, c)`.
/// `rows` and `cols` are the packed grid, `H/2` and `W/2` of the latent
/// (64 × 64 at 1024²). The batch does not appear: the ids are shared.
///
/// The values are exact in f32 (the graph's `img_ids` input is f32). The
/// pipeline casts its table to the model dtype, which for bf16 is exact only
/// up to 256 per axis (a 4096-pixel side).
pub fn latent_image_ids(rows: usize, cols: usize) -> Result<Vec<f32>, SchedulerError> {
    let n = element_count("image id grid [rows, cols, 3]", &[rows, cols, 3])?;
    if rows.max(cols) > 1 << 24 {
        return Err(SchedulerError::Shape(format!(
            "image id grid {rows}x{cols} has positions not exact in f32"
        )));
    }
    let mut ids = Vec::with_capacity(n);
    for r in 0..rows {
        for c in 0..cols {
            ids.extend_from_slice(&[0.0, r as f32, c as f32]);
        }
    }
    Ok(ids)
}

/// The `[text_tokens, 3]` text position ids of `encode_prompt`: all zeros.
pub fn text_ids(text_tokens: usize) -> Result<Vec<f32>, SchedulerError> {
    let n = element_count("text ids [T, 3]", &[text_tokens, 3])?;
    Ok(vec![0.0; n])
}
