//! [`Pipeline`]: a compiled text-to-image pipeline (`fluxc compile
//! pipeline.toml -o DIR`) on the GPU, its whole denoising loop and the VAE
//! decode recorded as one CUDA graph.
//!
//! [`Pipeline::load`] reads `DIR/pipeline.json` and checks the artifacts
//! against it on the host (`check`), loads `DIR/transformer`, `DIR/vae`
//! (and with hoisted conditioning `DIR/conditioning`) as [`Engine`]s
//! (without graphs of their own), compiles the runtime's
//! `kernels/pipeline.cu` with NVRTC (cached like `kernels.cu`), uploads
//! the constant tables (position ids, every step's timestep, the guidance)
//! once, and records on one stream of the device's primary context, which
//! both engines share:
//!
//! 1. the starting latents: seeded Gaussian noise drawn on the GPU, or the
//!    latents given (`fluxc_pipe_init_*`; the seed and the choice are read
//!    from device memory, so one graph serves every seed);
//! 2. with hoisted conditioning: every step's timestep, the guidance and
//!    the pooled embedding into the conditioning's inputs, and its steps
//!    (every step's modulation vectors, in one pass over their weights);
//! 3. per step i: copies of the latents, the prompt embeddings, the id
//!    tables, and the step's conditioning (its rows of the modulation
//!    vectors, or its timestep, the guidance and the pooled embedding) into
//!    the transformer's input buffers (its arena may reuse their bytes, so
//!    the pipeline keeps its own copies and refreshes the inputs every
//!    step), the transformer's steps, and the Euler update `x ← x + dt_i·v`
//!    into the pipeline's latents (`fluxc_pipe_euler_*`);
//! 4. `_unpack_latents` and `latents / scaling + shift` into the VAE's
//!    channels-last input (`fluxc_pipe_to_vae_*`), and the VAE's steps.
//!
//! [`Pipeline::generate`] copies the prompt embeddings and the seed (or
//! latents) in, launches the graph once, waits once, and copies the image
//! out. The noise is documented in `kernels/pipeline.cu` and mirrored on the
//! host by [`noise`]; it is not PyTorch's generator, so a seed gives another
//! image than diffusers' `torch.Generator` with that seed (start both from
//! the same latents to compare).

mod check;
mod image;
pub mod noise;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::CudaStream;
use fluxc_artifact::{
    ElemType, PipelineSpec, CONDITIONING_DIR, PIPELINE_FILE, TRANSFORMER_DIR, VAE_DIR,
};

use crate::convert::{decode, encode};
use crate::cuda::{DeviceBuffer, GraphExec, Module};
use crate::engine::load_module;
use crate::plan::Param;
use crate::{Artifact, Engine, LoadOptions, RuntimeError, Timing};

pub use image::Image;

/// The kernels' source.
const SOURCE: &str = include_str!("../../kernels/pipeline.cu");
/// Its file name, for NVRTC, the cache and errors.
const FILE: &str = "pipeline.cu";
/// Threads per block (`FLUXC_PIPE_THREADS`).
const THREADS: u32 = 256;
/// The most blocks a launch asks for; the kernels loop grid-stride.
const MAX_GRID: u64 = 1 << 16;

/// How a run starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Gaussian noise drawn on the GPU from this seed.
    Seed(u64),
    /// These packed latents `[B, (H/2)(W/2), 4C]` (as diffusers'
    /// `FluxPipeline(latents=...)` takes them), rounded to the latent dtype.
    Latents(&'a [f32]),
}

/// A device copy of a constant or per-run table, and where it goes.
struct Upload {
    /// The pipeline's copy.
    buffer: DeviceBuffer,
    /// The engine input it is copied into before each transformer forward.
    dst: u64,
    /// Bytes copied.
    bytes: usize,
}

/// The conditioning engine of a pipeline that hoists it out of the loop.
struct Hoisted {
    engine: Engine,
    /// Its output `[N·B, width]`.
    output: u64,
    /// Bytes of one step's rows.
    step_bytes: usize,
    /// The transformer's `modulation` input.
    dst: u64,
}

/// The three kernels of one latent dtype.
struct Kernels {
    init: sys::CUfunction,
    euler: sys::CUfunction,
    to_vae: sys::CUfunction,
}

/// A compiled pipeline on the GPU, ready to generate.
///
/// Fields drop in declaration order: the graph first, then the pipeline's
/// buffers and kernels, the engines, the stream last.
pub struct Pipeline {
    graph: Option<GraphExec>,
    kernels: Kernels,
    _module: Module,
    latents: DeviceBuffer,
    given: DeviceBuffer,
    seed: DeviceBuffer,
    use_given: DeviceBuffer,
    /// Every step's `timestep` input, one after the other.
    timesteps: DeviceBuffer,
    /// `guidance`, `img_ids`, `txt_ids` (constant) and the prompt
    /// embeddings (set per run), each with its engine input (`guidance` and
    /// `pooled` the conditioning's with hoisting).
    guidance: Option<Upload>,
    img_ids: Upload,
    txt_ids: Upload,
    embeds: Upload,
    pooled: Upload,
    /// The `timestep` input: the transformer's (step i copies bytes
    /// `i·timestep_bytes ..` of the table), or the conditioning's (one copy
    /// of the whole table per run).
    timestep_dst: u64,
    timestep_bytes: usize,
    hidden_dst: u64,
    velocity: u64,
    z: u64,
    conditioning: Option<Hoisted>,
    transformer: Engine,
    vae: Engine,
    stream: Arc<CudaStream>,
    spec: PipelineSpec,
    dir: PathBuf,
    embeds_dtype: ElemType,
    pooled_dtype: ElemType,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("dir", &self.dir)
            .field("name", &self.spec.name)
            .field("steps", &self.spec.steps)
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

/// Reads and validates `dir/pipeline.json`.
pub fn read_spec(dir: &Path) -> Result<PipelineSpec, RuntimeError> {
    let path = dir.join(PIPELINE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| RuntimeError::ArtifactIo {
        path: path.clone(),
        source,
    })?;
    let spec: PipelineSpec =
        serde_json::from_slice(&bytes).map_err(|source| RuntimeError::ArtifactJson {
            path: path.clone(),
            what: "pipeline spec",
            source,
        })?;
    spec.validate().map_err(|e| RuntimeError::InvalidArtifact {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(spec)
}

/// Reads the pipeline directory's spec and its artifacts and checks they
/// fit together, without a GPU (what [`Pipeline::load`] does first; apps
/// and the CLI call it to fail early).
pub fn check_dir(dir: &Path) -> Result<PipelineSpec, RuntimeError> {
    let spec = read_spec(dir)?;
    let transformer = Artifact::load(&dir.join(TRANSFORMER_DIR))?;
    let vae = Artifact::load(&dir.join(VAE_DIR))?;
    let conditioning = match spec.conditioning {
        Some(_) => Some(Artifact::load(&dir.join(CONDITIONING_DIR))?),
        None => None,
    };
    check::check_artifacts(&spec, &transformer, &vae, conditioning.as_ref())?;
    Ok(spec)
}

fn count(v: u64) -> Result<i64, RuntimeError> {
    i64::try_from(v).map_err(|_| RuntimeError::Unsupported("latents too large".into()))
}

fn grid(work: u64) -> u32 {
    work.div_ceil(u64::from(THREADS)).clamp(1, MAX_GRID) as u32
}

fn bytes_of(n: u64) -> Result<usize, RuntimeError> {
    usize::try_from(n).map_err(|_| RuntimeError::Device("a buffer does not fit this host".into()))
}

impl Pipeline {
    /// Loads the pipeline in `dir` with the transformer's weights from
    /// `transformer_weights` and the VAE's from `vae_weights` (files or
    /// diffusers directories; for a diffusers pipeline directory, its
    /// `transformer/` and `vae/`). Host checks come first; see the module
    /// documentation for the rest. `options.capture_graph` decides whether
    /// the loop is recorded (else [`Pipeline::generate`] launches it step by
    /// step); the engines never record graphs of their own.
    pub fn load(
        dir: &Path,
        transformer_weights: &Path,
        vae_weights: &Path,
        options: &LoadOptions,
    ) -> Result<Pipeline, RuntimeError> {
        let started = Instant::now();
        let say = |msg: &str| {
            if options.progress {
                eprintln!("fluxc-runtime: {msg}");
            }
        };
        let spec = check_dir(dir)?;
        let engine_options = LoadOptions {
            capture_graph: false,
            ..options.clone()
        };
        let transformer = Engine::load(
            &dir.join(TRANSFORMER_DIR),
            transformer_weights,
            &engine_options,
        )?;
        let vae = Engine::load(&dir.join(VAE_DIR), vae_weights, &engine_options)?;
        let conditioning = match &spec.conditioning {
            Some(_) => Some(Engine::load(
                &dir.join(CONDITIONING_DIR),
                transformer_weights,
                &engine_options,
            )?),
            None => None,
        };
        // The engine that takes the timestep, guidance and pooled inputs.
        let conditioned = conditioning.as_ref().unwrap_or(&transformer);
        let ctx = transformer.context().clone();
        ctx.bind_to_thread()
            .map_err(RuntimeError::driver("binding the CUDA context"))?;
        let stream = ctx
            .new_stream()
            .map_err(RuntimeError::driver("creating the pipeline's stream"))?;
        let cu = stream.cu_stream();
        let module = load_module(
            &ctx,
            FILE,
            SOURCE,
            &transformer.manifest().arch,
            options,
            &say,
        )?;
        let suffix = match spec.latent_dtype {
            ElemType::F32 => "f32",
            ElemType::Bf16 => "bf16",
            ElemType::F16 => "f16",
            other => return Err(RuntimeError::Unsupported(format!("latents in {other:?}"))),
        };
        let function = |name: &str| {
            let name = format!("fluxc_pipe_{name}_{suffix}");
            module.function(&name).map_err(|code| {
                RuntimeError::driver(format!("looking up kernel `{name}` of {FILE}"))(
                    drv::DriverError(code),
                )
            })
        };
        let kernels = Kernels {
            init: function("init")?,
            euler: function("euler")?,
            to_vae: function("to_vae")?,
        };

        let t = &spec.transformer;
        let latent_bytes = spec.latent.elements() * spec.latent_dtype.size_bytes();
        let zeroed = |bytes: u64, what: &str| DeviceBuffer::zeroed(&ctx, cu, bytes, what);
        let latents = zeroed(latent_bytes, "the pipeline's latents")?;
        let given = zeroed(latent_bytes, "the pipeline's given latents")?;
        let seed = zeroed(8, "the pipeline's seed")?;
        let use_given = zeroed(4, "the pipeline's start flag")?;
        let (hidden_dst, _) = transformer.input_address(&t.hidden_states)?;
        let (velocity, _) = transformer.output_address(&t.output)?;
        let (z, _) = vae.input_address(&spec.vae.latents)?;
        let (timestep_dst, timestep_buffer) = conditioned.input_address(&t.timestep)?;
        let batch = spec.latent.batch as usize;
        let per_step: Vec<f32> = spec
            .timesteps
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, batch))
            .collect();
        let table = encode(timestep_buffer.dtype, &per_step);
        let timesteps = zeroed(table.len() as u64, "the timestep table")?;
        // SAFETY: the buffer holds `table.len()` bytes; `table` (like the
        // host bytes of `upload` below, kept in `_*_host`) lives until the
        // stream is synchronized further down.
        unsafe { drv::memcpy_htod_async(timesteps.ptr(), &table, cu) }
            .map_err(RuntimeError::driver("uploading the timestep table"))?;
        let upload = |engine: &Engine,
                      name: &str,
                      values: Option<&[f32]>|
         -> Result<(Upload, Vec<u8>, ElemType), RuntimeError> {
            let (dst, buffer) = engine.input_address(name)?;
            let bytes = bytes_of(buffer.bytes)?;
            let copy = zeroed(buffer.bytes, &format!("the pipeline's copy of `{name}`"))?;
            let host = values.map(|v| encode(buffer.dtype, v)).unwrap_or_default();
            if !host.is_empty() {
                // SAFETY: `host` has the buffer's size (the spec's tables were
                // checked against the shapes); it lives until the sync below.
                unsafe { drv::memcpy_htod_async(copy.ptr(), &host, cu) }
                    .map_err(RuntimeError::driver(format!("uploading `{name}`")))?;
            }
            Ok((
                Upload {
                    buffer: copy,
                    dst,
                    bytes,
                },
                host,
                buffer.dtype,
            ))
        };
        // The conditioning takes every step's guidance at once.
        let guidance_rows = match conditioning {
            Some(_) => per_step.len(),
            None => batch,
        };
        let guidance_values = spec.guidance.map(|g| vec![g; guidance_rows]);
        let (guidance, _g_host) = match (&t.guidance, &guidance_values) {
            (Some(name), Some(values)) => {
                let (u, host, _) = upload(conditioned, name, Some(values))?;
                (Some(u), host)
            }
            _ => (None, Vec::new()),
        };
        let (img_ids, _img_host, _) = upload(&transformer, &t.img_ids, Some(&spec.img_ids))?;
        let (txt_ids, _txt_host, _) = upload(&transformer, &t.txt_ids, Some(&spec.txt_ids))?;
        let (embeds, _, embeds_dtype) = upload(&transformer, &t.encoder_hidden_states, None)?;
        let (pooled, _, pooled_dtype) = upload(conditioned, &t.pooled_projections, None)?;
        let conditioning = match (conditioning, &spec.conditioning) {
            (Some(engine), Some(c)) => {
                let (output, buffer) = engine.output_address(&c.output)?;
                let (dst, modulation) = transformer.input_address(&c.modulation)?;
                let step_bytes = bytes_of(modulation.bytes)?;
                if buffer.bytes != modulation.bytes * u64::from(spec.steps) {
                    return Err(RuntimeError::InvalidArtifact {
                        dir: dir.join(CONDITIONING_DIR),
                        reason: format!(
                            "output `{}` holds {} bytes, not {} steps of the transformer's \
                             `{}` ({} bytes)",
                            c.output, buffer.bytes, spec.steps, c.modulation, modulation.bytes
                        ),
                    });
                }
                Some(Hoisted {
                    engine,
                    output,
                    step_bytes,
                    dst,
                })
            }
            _ => None,
        };
        stream
            .synchronize()
            .map_err(RuntimeError::driver("uploading the pipeline's tables"))?;
        let mut pipeline = Pipeline {
            graph: None,
            kernels,
            _module: module,
            latents,
            given,
            seed,
            use_given,
            timesteps,
            guidance,
            img_ids,
            txt_ids,
            embeds,
            pooled,
            timestep_dst,
            timestep_bytes: bytes_of(timestep_buffer.bytes)?,
            hidden_dst,
            velocity,
            z,
            conditioning,
            transformer,
            vae,
            stream,
            spec,
            dir: dir.to_path_buf(),
            embeds_dtype,
            pooled_dtype,
        };
        if options.capture_graph {
            let graph = GraphExec::capture(&ctx, cu, || pipeline.enqueue_loop())?;
            graph
                .upload(cu)
                .map_err(RuntimeError::driver("uploading the pipeline's CUDA graph"))?;
            pipeline.graph = Some(graph);
            pipeline.sync("uploading the pipeline's CUDA graph")?;
        }
        say(&format!(
            "pipeline `{}` ready in {:.1} s: {} {} steps{}",
            pipeline.spec.name,
            started.elapsed().as_secs_f64(),
            pipeline.spec.steps,
            pipeline.spec.scheduler,
            if pipeline.graph.is_some() {
                ", recorded with the VAE decode as one CUDA graph"
            } else {
                " (no graph)"
            }
        ));
        Ok(pipeline)
    }

    /// The spec (`pipeline.json`).
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// The transformer's engine.
    pub fn transformer(&self) -> &Engine {
        &self.transformer
    }

    /// The VAE decoder's engine.
    pub fn vae(&self) -> &Engine {
        &self.vae
    }

    /// The engine computing every step's conditioning once per run, when
    /// the pipeline hoists it out of the loop.
    pub fn conditioning(&self) -> Option<&Engine> {
        self.conditioning.as_ref().map(|h| &h.engine)
    }

    /// Whether the loop was recorded as a CUDA graph.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Elements of `prompt_embeds` `[B, T, joint_attention_dim]`.
    pub fn embeds_len(&self) -> usize {
        let s = &self.spec;
        (s.latent.batch * s.text_tokens * s.joint_attention_dim) as usize
    }

    /// Elements of `pooled_prompt_embeds` `[B, pooled_projection_dim]`.
    pub fn pooled_len(&self) -> usize {
        (self.spec.latent.batch * self.spec.pooled_projection_dim) as usize
    }

    /// Elements of the packed latents `[B, (H/2)(W/2), 4C]`.
    pub fn latents_len(&self) -> usize {
        self.spec.latent.elements() as usize
    }

    /// Runs the whole pipeline once: `prompt_embeds` `[B, T, D]` and
    /// `pooled_prompt_embeds` `[B, P]` (row-major f32, converted to the
    /// transformer's dtypes), starting from `start`; one graph launch and
    /// one wait, then the image is copied out.
    pub fn generate(
        &mut self,
        prompt_embeds: &[f32],
        pooled_prompt_embeds: &[f32],
        start: Start<'_>,
    ) -> Result<Image, RuntimeError> {
        let size = |name: &str, expected: usize, found: usize, shape: Vec<u64>| {
            if expected == found {
                Ok(())
            } else {
                Err(RuntimeError::InputSize {
                    name: name.into(),
                    expected: expected as u64,
                    found,
                    shape,
                })
            }
        };
        let s = &self.spec;
        let b = s.latent.batch;
        size(
            "prompt_embeds",
            self.embeds_len(),
            prompt_embeds.len(),
            vec![b, s.text_tokens, s.joint_attention_dim],
        )?;
        size(
            "pooled_prompt_embeds",
            self.pooled_len(),
            pooled_prompt_embeds.len(),
            vec![b, s.pooled_projection_dim],
        )?;
        let (seed, flag, given) = match start {
            Start::Seed(seed) => (seed, 0i32, Vec::new()),
            Start::Latents(latents) => {
                size(
                    "latents",
                    self.latents_len(),
                    latents.len(),
                    s.latent.packed().to_vec(),
                )?;
                (0, 1, encode(s.latent_dtype, latents))
            }
        };
        let embeds = encode(self.embeds_dtype, prompt_embeds);
        let pooled = encode(self.pooled_dtype, pooled_prompt_embeds);
        let seed_bytes = seed.to_le_bytes();
        let flag_bytes = flag.to_le_bytes();
        self.bind()?;
        let cu = self.stream.cu_stream();
        let copies: [(u64, &[u8], &str); 5] = [
            (self.embeds.buffer.ptr(), &embeds, "prompt_embeds"),
            (self.pooled.buffer.ptr(), &pooled, "pooled_prompt_embeds"),
            (self.seed.ptr(), &seed_bytes, "the seed"),
            (self.use_given.ptr(), &flag_bytes, "the start flag"),
            (self.given.ptr(), &given, "the given latents"),
        ];
        for (dst, bytes, what) in copies {
            if bytes.is_empty() {
                continue;
            }
            // SAFETY: every destination holds exactly these bytes (sizes
            // checked above; the buffers were allocated from the same
            // shapes); the host bytes live until the synchronize below.
            unsafe { drv::memcpy_htod_async(dst, bytes, cu) }
                .map_err(RuntimeError::driver(format!("copying {what}")))?;
        }
        self.launch()?;
        self.sync("running the pipeline")?;
        self.image()
    }

    /// The starting noise of `seed` as the loop draws it (packed `[B,
    /// (H/2)(W/2), 4C]`, in the latent dtype, converted to f32): runs only
    /// the drawing kernel into the latents and copies them out. Handy to
    /// hand fluxc's noise to another implementation as its latents.
    pub fn noise(&mut self, seed: u64) -> Result<Vec<f32>, RuntimeError> {
        self.bind()?;
        let cu = self.stream.cu_stream();
        let seed_bytes = seed.to_le_bytes();
        let flag = 0i32.to_le_bytes();
        // SAFETY: the seed buffer holds 8 bytes and the flag 4; the host
        // bytes live until the synchronize in `final_latents`.
        unsafe {
            drv::memcpy_htod_async(self.seed.ptr(), &seed_bytes, cu)
                .and_then(|()| drv::memcpy_htod_async(self.use_given.ptr(), &flag, cu))
        }
        .map_err(RuntimeError::driver("copying the seed"))?;
        let l = &self.spec.latent;
        let mut params = vec![
            Param::Ptr(self.latents.ptr()),
            Param::Ptr(self.given.ptr()),
            Param::Ptr(self.seed.ptr()),
            Param::Ptr(self.use_given.ptr()),
        ];
        for d in [l.batch, l.channels, l.height, l.width] {
            params.push(Param::I64(count(d)?));
        }
        self.kernel(
            self.kernels.init,
            grid(l.elements()),
            params,
            "drawing noise",
        )?;
        self.final_latents()
    }

    /// The latents after the last step (packed `[B, (H/2)(W/2), 4C]`, before
    /// the VAE's scaling), converted to f32.
    pub fn final_latents(&self) -> Result<Vec<f32>, RuntimeError> {
        let mut host = vec![
            0u8;
            self.latents.bytes().min(bytes_of(
                self.spec.latent.elements() * self.spec.latent_dtype.size_bytes(),
            )?)
        ];
        self.bind()?;
        // SAFETY: `host` is no larger than the buffer and lives until the
        // synchronize below.
        unsafe { drv::memcpy_dtoh_async(&mut host, self.latents.ptr(), self.stream.cu_stream()) }
            .map_err(RuntimeError::driver("reading the latents"))?;
        self.sync("reading the latents")?;
        Ok(decode(self.spec.latent_dtype, &host))
    }

    /// Times `replays` launches of the whole pipeline with the inputs of
    /// the last [`Pipeline::generate`], after `warmup` untimed ones: GPU
    /// milliseconds between events around each launch, and the host time
    /// of each launch call onto an idle stream.
    pub fn time_replays(&mut self, warmup: usize, replays: usize) -> Result<Timing, RuntimeError> {
        self.bind()?;
        for _ in 0..warmup {
            self.launch()?;
        }
        self.sync("running the warm-up runs")?;
        let ctx = self.transformer.context().clone();
        let event = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(RuntimeError::driver("creating a timing event"))
        };
        let mut timing = Timing::default();
        for _ in 0..replays {
            let (start, end) = (event()?, event()?);
            start
                .record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            let t = Instant::now();
            self.launch()?;
            timing.launch_us.push(t.elapsed().as_secs_f64() * 1e6);
            end.record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            self.sync("running the timed runs")?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(RuntimeError::driver("reading a timing event"))?;
            timing.gpu_ms.push(f64::from(ms));
        }
        Ok(timing)
    }

    /// The VAE's output as an [`Image`].
    fn image(&self) -> Result<Image, RuntimeError> {
        let name = &self.spec.vae.output;
        let dtype = self.vae.output_buffer(name)?.dtype;
        let [height, width, channels] = self.spec.image;
        Ok(Image {
            batch: self.spec.latent.batch as usize,
            height: height as usize,
            width: width as usize,
            channels: channels as usize,
            dtype,
            data: self.vae.output(name)?,
        })
    }

    /// Enqueues one run: the graph, or the loop launched directly.
    fn launch(&self) -> Result<(), RuntimeError> {
        match &self.graph {
            Some(graph) => graph
                .launch(self.stream.cu_stream())
                .map_err(RuntimeError::driver("launching the pipeline's CUDA graph")),
            None => self.enqueue_loop(),
        }
    }

    /// Enqueues the whole loop and the decode on the pipeline's stream (the
    /// body of the graph).
    fn enqueue_loop(&self) -> Result<(), RuntimeError> {
        let cu = self.stream.cu_stream();
        let l = &self.spec.latent;
        let n = l.elements();
        let dims = [
            Param::I64(count(l.batch)?),
            Param::I64(count(l.channels)?),
            Param::I64(count(l.height)?),
            Param::I64(count(l.width)?),
        ];
        let mut init = vec![
            Param::Ptr(self.latents.ptr()),
            Param::Ptr(self.given.ptr()),
            Param::Ptr(self.seed.ptr()),
            Param::Ptr(self.use_given.ptr()),
        ];
        init.extend(dims);
        self.kernel(
            self.kernels.init,
            grid(n),
            init,
            "drawing the starting latents",
        )?;
        let latent_bytes = bytes_of(n * self.spec.latent_dtype.size_bytes())?;
        let copy = |copies: Vec<(u64, u64, usize)>, what: &str| -> Result<(), RuntimeError> {
            for (dst, src, bytes) in copies {
                // SAFETY: every source is a pipeline buffer or a range of the
                // conditioning's output, every destination an engine input
                // of that size (checked against the spec at load).
                unsafe { drv::memcpy_dtod_async(dst, src, bytes, cu) }
                    .map_err(RuntimeError::driver(format!("{what}: copying an input")))?;
            }
            Ok(())
        };
        let conditioning_inputs = || {
            [&self.pooled]
                .into_iter()
                .chain(self.guidance.as_ref())
                .map(|u| (u.dst, u.buffer.ptr(), u.bytes))
        };
        if let Some(h) = &self.conditioning {
            // Every step's timestep at once (the whole table).
            let mut copies = vec![(self.timestep_dst, self.timesteps.ptr(), self.timestep_bytes)];
            copies.extend(conditioning_inputs());
            copy(copies, "the conditioning")?;
            h.engine.enqueue_all_on(cu)?;
        }
        let dt = self.spec.dt();
        for (i, &dt) in dt.iter().enumerate() {
            let mut copies = vec![(self.hidden_dst, self.latents.ptr(), latent_bytes)];
            for u in [&self.embeds, &self.img_ids, &self.txt_ids] {
                copies.push((u.dst, u.buffer.ptr(), u.bytes));
            }
            match &self.conditioning {
                Some(h) => copies.push((h.dst, h.output + (i * h.step_bytes) as u64, h.step_bytes)),
                None => {
                    let timestep = self.timesteps.ptr() + (i * self.timestep_bytes) as u64;
                    copies.push((self.timestep_dst, timestep, self.timestep_bytes));
                    copies.extend(conditioning_inputs());
                }
            }
            copy(copies, &format!("step {i}"))?;
            self.transformer.enqueue_all_on(cu)?;
            self.kernel(
                self.kernels.euler,
                grid(n),
                vec![
                    Param::Ptr(self.latents.ptr()),
                    Param::Ptr(self.velocity),
                    Param::F32(dt),
                    Param::I64(count(n)?),
                ],
                "the Euler step",
            )?;
        }
        let mut to_vae = vec![
            Param::Ptr(self.latents.ptr()),
            Param::Ptr(self.z),
            Param::F32(1.0 / self.spec.vae_scaling_factor),
            Param::F32(self.spec.vae_shift_factor),
        ];
        to_vae.extend(dims);
        self.kernel(
            self.kernels.to_vae,
            grid(n),
            to_vae,
            "unpacking the latents",
        )?;
        self.vae.enqueue_all_on(cu)
    }

    /// Enqueues one of the pipeline's kernels.
    fn kernel(
        &self,
        func: sys::CUfunction,
        blocks: u32,
        mut params: Vec<Param>,
        what: &str,
    ) -> Result<(), RuntimeError> {
        let mut ptrs: Vec<*mut c_void> = params.iter_mut().map(Param::as_kernel_param).collect();
        // SAFETY: `func` belongs to the loaded pipeline.cu and the parameters
        // match its signature there; they point into `params`, alive for
        // the call; every pointer addresses a pipeline buffer or an engine
        // buffer of the size the spec gives.
        unsafe {
            drv::launch_kernel(
                func,
                (blocks, 1, 1),
                (THREADS, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(RuntimeError::driver(format!("launching {what}")))
    }

    fn bind(&self) -> Result<(), RuntimeError> {
        self.transformer
            .context()
            .bind_to_thread()
            .map_err(RuntimeError::driver("binding the CUDA context"))
    }

    fn sync(&self, what: &str) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(RuntimeError::driver(what))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Nothing may be in flight when the buffers and the graph go.
        let _ = self.bind();
        let _ = self.stream.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_named, nvrtc_options};

    #[test]
    fn grids_cover_the_work() {
        assert_eq!(grid(0), 1);
        assert_eq!(grid(257), 2);
        assert_eq!(grid(u64::MAX), 1 << 16);
    }

    #[test]
    fn a_missing_spec_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("pipeline.json"), "{err}");
        std::fs::write(dir.path().join(PIPELINE_FILE), "{}").unwrap();
        let err = check_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid pipeline spec"), "{err}");
    }

    /// pipeline.cu compiles for sm_90a and defines every kernel the
    /// pipeline looks up. Runs where libnvrtc loads and the CUDA headers are
    /// found (set `LD_LIBRARY_PATH` and `FLUXC_CUDA_INCLUDE`); otherwise
    /// says why it skips.
    #[test]
    fn pipeline_cu_compiles_where_nvrtc_is_available() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!(
                "SKIP pipeline_cu_compiles_where_nvrtc_is_available: libnvrtc cannot be loaded"
            );
            return;
        }
        let include = LoadOptions::default().cuda_include_dirs;
        if !include.iter().any(|d| d.join("cuda_bf16.h").is_file()) {
            println!(
                "SKIP pipeline_cu_compiles_where_nvrtc_is_available: no cuda_bf16.h in {include:?}"
            );
            return;
        }
        let options = nvrtc_options("sm_90a", &include);
        let (cubin, log) = compile_named(FILE, SOURCE, "sm_90a", &options).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");
        assert!(log.is_empty(), "NVRTC warnings:\n{log}");
        for kind in ["init", "euler", "to_vae"] {
            for suffix in ["f32", "bf16", "f16"] {
                let name = format!("fluxc_pipe_{kind}_{suffix}");
                let found = cubin.windows(name.len()).any(|w| w == name.as_bytes());
                assert!(found, "{name} is not in the CUBIN");
            }
        }
    }
}
