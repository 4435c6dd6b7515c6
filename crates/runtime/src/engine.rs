//! [`Engine`]: an artifact loaded on the GPU with its weights, recorded as
//! one CUDA graph.
//!
//! [`Engine::load`] does everything that can fail before the first run:
//!
//! 1. on the host: read and validate the artifact (every step included),
//!    open the checkpoint, choose its layout, check every weight;
//! 2. find the CUDA libraries and the device (a missing library is
//!    [`RuntimeError::NoCuda`]), check that the device runs the artifact's
//!    architecture, create the context and a non-default stream (event
//!    tracking off: the engine orders everything on that one stream);
//! 3. compile `kernels.cu` with NVRTC (or take the cached CUBIN), load it,
//!    resolve every kernel and raise its dynamic shared memory limit;
//! 4. allocate the arena, the weight region, the scratch region (all
//!    zeroed), the GEMM workspace and the workspace of attention steps
//!    split over keys (`attention_split`, planned for the device's SM
//!    count) once, and stream the weights in
//!    (`weight_fill.rs`): fp8 weights from the artifact's quantized-weights
//!    cache when it matches (`fp8_cache`), else quantized on the GPU
//!    (`quantize.rs`, compiled like `kernels.cu`) through a staging buffer
//!    that is freed afterwards; with `LoadOptions::save_quantized`, the
//!    cache is written;
//! 5. prepare every GEMM with cuBLASLt, run the schedule once eagerly
//!    (step by step, so a failing step is named; this also lets cuBLASLt
//!    and the driver load what they load lazily outside the capture), and
//!    record it into a CUDA graph.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaStream};
use fluxc_artifact::{Binding, Buffer, BufferId, Manifest, Schedule, Step};
use fluxc_checkpoint::Checkpoint;

use crate::artifact::Artifact;
use crate::attention_split::{self, SplitPlan};
use crate::blas::{BlasHandle, GemmAddrs, GemmPlan};
use crate::compile::{cached_named, compile_named, nvrtc_options, CubinOrigin, KERNELS_FILE};
use crate::conv::{self, ConvAddrs, ConvPlan, CudnnHandle};
use crate::convert::{decode, encode};
use crate::cuda::{
    check_device, check_libraries, driver_version, Arch, DeviceBuffer, GraphExec, Module,
};
use crate::plan::{address, describe_step, kernel_params, kernels, Bases, Param};
use crate::quantize;
use crate::tensor_map;
use crate::timing::Timing;
use crate::weight_fill::{self, Fp8Origin};
use crate::weights::{select_layout, WeightPlan};
use crate::{LoadOptions, RuntimeError};

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_MAX_DYNAMIC_SHARED: u32 = 48 * 1024;

/// One kernel launch, ready to enqueue.
struct KernelLaunch {
    func: sys::CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    params: Vec<Param>,
}

/// One step, ready to enqueue.
enum Op {
    /// Kernel launches, in order: one (a generated kernel or an
    /// attention), or an attention split over keys (`attention_split`).
    Kernels(Vec<KernelLaunch>),
    /// A cuBLASLt matmul.
    Gemm(GemmPlan),
    /// A device-to-device copy.
    Copy { dst: u64, src: u64, bytes: usize },
    /// A cuDNN convolution.
    Conv(ConvPlan),
}

/// The most workspace a convolution's algorithm may take.
const CONV_WORKSPACE_LIMIT: usize = 256 << 20;

/// A compiled model on the GPU, ready to run.
///
/// Fields are dropped in declaration order: the graph before the GEMM
/// descriptors and kernels it uses, those before the module and the
/// memory, the stream and the context last.
pub struct Engine {
    graph: Option<GraphExec>,
    ops: Vec<Op>,
    blas: Option<BlasHandle>,
    dnn: Option<CudnnHandle>,
    _module: Module,
    workspace: DeviceBuffer,
    workspace_bytes: usize,
    /// The partial results of attention steps split over keys (shared:
    /// the steps run one after another).
    _split_workspace: DeviceBuffer,
    /// cuDNN's workspace: what the convolutions' algorithms need, at most
    /// [`CONV_WORKSPACE_LIMIT`].
    conv_workspace: DeviceBuffer,
    weights: DeviceBuffer,
    scratch: DeviceBuffer,
    arena: DeviceBuffer,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    artifact: Artifact,
    layout: String,
    device_name: String,
    fp8_origin: Fp8Origin,
    /// Inputs as set, encoded in their buffers' dtypes; uploaded again
    /// before every run (the arena may reuse their bytes).
    staged: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("artifact", &self.artifact.dir)
            .field("model", &self.artifact.manifest.model_name)
            .field("layout", &self.layout)
            .field("device", &self.device_name)
            .field("steps", &self.ops.len())
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

impl Engine {
    /// Loads the artifact in `artifact_dir` with the weights of
    /// `checkpoint` (a file or a diffusers directory) onto the GPU and
    /// records it as a CUDA graph. See the module documentation for the
    /// steps; host-side problems (artifact, checkpoint) are reported before
    /// CUDA is touched.
    pub fn load(
        artifact_dir: &Path,
        checkpoint: &Path,
        options: &LoadOptions,
    ) -> Result<Engine, RuntimeError> {
        let started = Instant::now();
        let say = |msg: &str| {
            if options.progress {
                eprintln!("fluxc-runtime: {msg}");
            }
        };

        // 1. Host checks.
        let artifact = Artifact::load(artifact_dir)?;
        let schedule = &artifact.schedule;
        let mut ckpt = Checkpoint::open(checkpoint)?;
        let layout_index = select_layout(&artifact.manifest, &mut ckpt)?;
        let layout = artifact.manifest.layouts[layout_index].name.clone();
        let plan = WeightPlan::new(&artifact.manifest, schedule, &layout, &ckpt)?;
        let quantize_jobs = if options.quantize_on_gpu {
            plan.quantize_job_sizes(&ckpt)?
        } else {
            Vec::new()
        };
        let staging_bytes = quantize::staging_bytes(&quantize_jobs);
        let arch = Arch::parse(&artifact.manifest.arch).ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "architecture `{}` (expected sm_<major><minor>[a])",
                artifact.manifest.arch
            ))
        })?;
        say(&format!(
            "artifact `{}` ({}, {} steps), checkpoint `{}` in layout `{layout}`",
            artifact.dir.display(),
            artifact.manifest.model_name,
            schedule.steps.len(),
            ckpt.location().display()
        ));

        // 2. CUDA, device, context, stream.
        check_libraries(schedule.steps.iter().any(|s| matches!(s, Step::Gemm(_))))?;
        let has_convs = schedule.steps.iter().any(|s| matches!(s, Step::Conv(_)));
        if has_convs {
            conv::check_library()?;
        }
        check_device(options.device)?;
        let ctx = CudaContext::new(options.device)
            .map_err(RuntimeError::driver("creating the CUDA context"))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(RuntimeError::driver("querying the compute capability"))?;
        if !arch.runs_on(major as u32, minor as u32) {
            return Err(RuntimeError::Device(format!(
                "the artifact is compiled for {}, but device {} ({device_name}) is sm_{major}{minor}",
                artifact.manifest.arch, options.device
            )));
        }
        // SAFETY: every allocation and launch of the engine is ordered on
        // its one stream, so cudarc's cross-stream event tracking is not needed
        // (and its events would break graph capture).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(RuntimeError::driver("creating a stream"))?;
        let cu_stream = stream.cu_stream();

        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(RuntimeError::driver("querying the SM count"))?;
        let splits =
            attention_split::plan_steps(&schedule.steps, options.attention_split.sms(sms as u32));
        let split_bytes = attention_split::shared_workspace_bytes(&schedule.steps, &splits);
        check_memory(&ctx, schedule, [staging_bytes, split_bytes], &device_name)?;

        // 3. Kernels.
        let arch = &artifact.manifest.arch;
        let module = load_module(&ctx, KERNELS_FILE, &artifact.kernels, arch, options, &say)?;
        let functions = resolve_kernels(&ctx, &module, &artifact)?;

        // 4. Memory and weights.
        let arena = DeviceBuffer::zeroed(
            &ctx,
            cu_stream,
            schedule.arena_bytes,
            "the activation arena",
        )?;
        let weights =
            DeviceBuffer::zeroed(&ctx, cu_stream, schedule.weight_bytes, "the weight region")?;
        // Kernel-private state must start zero; an empty region still gets
        // a (one-byte) allocation, so every base address is valid.
        let scratch = DeviceBuffer::zeroed(
            &ctx,
            cu_stream,
            schedule.scratch_bytes,
            "the scratch region",
        )?;
        let workspace = DeviceBuffer::zeroed(
            &ctx,
            cu_stream,
            schedule.gemm_workspace_bytes,
            "the GEMM workspace",
        )?;
        let split_workspace = DeviceBuffer::zeroed(
            &ctx,
            cu_stream,
            split_bytes,
            "the workspace of attention split over keys",
        )?;
        let workspace_bytes = usize::try_from(schedule.gemm_workspace_bytes).map_err(|_| {
            RuntimeError::Device("the GEMM workspace does not fit this host".into())
        })?;
        let fp8_origin = weight_fill::fill(&weight_fill::Fill {
            ctx: &ctx,
            stream: &stream,
            weights: &weights,
            artifact: &artifact,
            layout_index,
            plan: &plan,
            checkpoint: &ckpt,
            options,
            staging_bytes,
        })?;
        drop(ckpt);

        // 5. GEMMs, steps, graph.
        let bases = Bases {
            arena: arena.ptr(),
            weights: weights.ptr(),
            scratch: scratch.ptr(),
        };
        let blas = if schedule.steps.iter().any(|s| matches!(s, Step::Gemm(_))) {
            ctx.bind_to_thread()
                .map_err(RuntimeError::driver("binding the context"))?;
            Some(BlasHandle::new()?)
        } else {
            None
        };
        let dnn = if has_convs {
            ctx.bind_to_thread()
                .map_err(RuntimeError::driver("binding the context"))?;
            Some(CudnnHandle::new()?)
        } else {
            None
        };
        let ops = build_ops(
            schedule,
            bases,
            &functions,
            blas.as_ref(),
            workspace_bytes,
            dnn.as_ref(),
            (&splits, split_workspace.ptr()),
        )?;
        let standard = standard_accumulation_gemms(schedule, &ops);
        if let Some(first) = standard.first() {
            say(&format!(
                "{} fp8 GEMMs accumulate as usual: cuBLASLt has no fast-accumulation algorithm \
                 for them (the first: `{first}`)",
                standard.len()
            ));
        }
        let split_count = splits.iter().flatten().count();
        if split_count > 0 {
            say(&format!(
                "{split_count} attention steps split their last wave of query tiles over keys \
                 ({sms} SMs)"
            ));
        }
        let conv_workspace_bytes = ops
            .iter()
            .map(|op| match op {
                Op::Conv(plan) => plan.workspace_bytes,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let conv_workspace = DeviceBuffer::zeroed(
            &ctx,
            cu_stream,
            conv_workspace_bytes as u64,
            "the convolutions' workspace",
        )?;
        let mut engine = Engine {
            graph: None,
            ops,
            blas,
            dnn,
            _module: module,
            workspace,
            workspace_bytes,
            _split_workspace: split_workspace,
            conv_workspace,
            weights,
            scratch,
            arena,
            stream,
            ctx,
            artifact,
            layout,
            device_name,
            fp8_origin,
            staged: BTreeMap::new(),
        };
        engine.run_steps_checked()?;
        if options.capture_graph {
            let graph = GraphExec::capture(&engine.ctx, cu_stream, || engine.enqueue_all())?;
            graph
                .upload(cu_stream)
                .map_err(RuntimeError::driver("uploading the CUDA graph"))?;
            engine.graph = Some(graph);
            engine.sync("uploading the CUDA graph")?;
        }
        say(&format!(
            "ready on {} in {:.1} s: {} steps{}",
            engine.device_name,
            started.elapsed().as_secs_f64(),
            engine.ops.len(),
            if engine.graph.is_some() {
                ", recorded as one CUDA graph"
            } else {
                " (no graph: steps are launched one by one)"
            }
        ));
        Ok(engine)
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The artifact's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.artifact.manifest
    }

    /// The artifact's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.artifact.schedule
    }

    /// The checkpoint layout the weights were read in.
    pub fn layout(&self) -> &str {
        &self.layout
    }

    /// The GPU's name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Where the fp8 weights came from: quantized while loading, or read
    /// from the quantized-weights cache.
    pub fn fp8_origin(&self) -> &Fp8Origin {
        &self.fp8_origin
    }

    /// The GEMMs (by name) that ask for fast fp8 accumulation but run
    /// without it: cuBLASLt had no algorithm with it for them.
    pub fn standard_accumulation_gemms(&self) -> Vec<&str> {
        standard_accumulation_gemms(&self.artifact.schedule, &self.ops)
    }

    /// Whether the schedule was recorded into a CUDA graph.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// The graph inputs.
    pub fn inputs(&self) -> &[Binding] {
        &self.artifact.schedule.inputs
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[Binding] {
        &self.artifact.schedule.outputs
    }

    /// The buffer of input `name`.
    pub fn input_buffer(&self, name: &str) -> Result<&Buffer, RuntimeError> {
        self.binding("input", &self.artifact.schedule.inputs, name)
    }

    /// The buffer of output `name`.
    pub fn output_buffer(&self, name: &str) -> Result<&Buffer, RuntimeError> {
        self.binding("output", &self.artifact.schedule.outputs, name)
    }

    fn binding(
        &self,
        kind: &'static str,
        list: &[Binding],
        name: &str,
    ) -> Result<&Buffer, RuntimeError> {
        let binding =
            list.iter()
                .find(|b| b.name == name)
                .ok_or_else(|| RuntimeError::UnknownBinding {
                    kind,
                    name: name.to_string(),
                    known: list
                        .iter()
                        .map(|b| format!("`{}`", b.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        self.buffer(binding.buffer)
    }

    fn buffer(&self, id: BufferId) -> Result<&Buffer, RuntimeError> {
        self.artifact
            .schedule
            .buffers
            .get(id as usize)
            .ok_or(RuntimeError::NoSuchBuffer(id))
    }

    /// Sets input `name` to `data` (row-major, as many elements as its
    /// buffer holds), converted to the buffer's dtype. The input is kept and
    /// uploaded again before every run.
    pub fn set_input(&mut self, name: &str, data: &[f32]) -> Result<(), RuntimeError> {
        let buffer = self.input_buffer(name)?;
        if data.len() as u64 != buffer.elements() {
            return Err(RuntimeError::InputSize {
                name: name.to_string(),
                expected: buffer.elements(),
                found: data.len(),
                shape: buffer.shape.clone(),
            });
        }
        let bytes = encode(buffer.dtype, data);
        let dst = self.arena.ptr() + buffer.offset;
        self.bind()?;
        // SAFETY: `dst` holds `buffer.bytes == bytes.len()` bytes of the arena;
        // `bytes` lives until the synchronize below.
        unsafe { drv::memcpy_htod_async(dst, &bytes, self.stream.cu_stream()) }
            .map_err(RuntimeError::driver(format!("copying input `{name}`")))?;
        self.sync(&format!("copying input `{name}`"))?;
        self.staged.insert(name.to_string(), bytes);
        Ok(())
    }

    /// Runs one forward (the CUDA graph, or every step when there is none)
    /// and waits for it.
    pub fn run(&mut self) -> Result<(), RuntimeError> {
        self.bind()?;
        self.upload_inputs()?;
        self.launch_forward()?;
        self.sync("running the forward")
    }

    /// Runs one forward without the graph: every step is launched directly
    /// and waited for, so a failing step is named (for debugging).
    pub fn run_eager(&mut self) -> Result<(), RuntimeError> {
        self.bind()?;
        self.upload_inputs()?;
        self.sync("uploading the inputs")?;
        self.run_steps_checked()
    }

    /// Output `name`, converted to f32.
    pub fn output(&self, name: &str) -> Result<Vec<f32>, RuntimeError> {
        let buffer = self.output_buffer(name)?;
        self.read_buffer(buffer.id)
    }

    /// Any buffer of the schedule (activations, weights, scratch), converted
    /// to f32. Activations are only meaningful while the arena has not
    /// reused their bytes (compile without memory reuse to compare
    /// intermediates).
    pub fn read_buffer(&self, id: BufferId) -> Result<Vec<f32>, RuntimeError> {
        let buffer = self.buffer(id)?;
        let base = self.bases().of(buffer.region);
        let bytes = usize::try_from(buffer.bytes).map_err(|_| {
            RuntimeError::Device(format!("buffer `{}` does not fit this host", buffer.name))
        })?;
        let mut host = vec![0u8; bytes];
        self.bind()?;
        let what = format!("reading buffer {} `{}`", buffer.id, buffer.name);
        // SAFETY: the buffer lies inside its region (validated schedule);
        // `host` lives until the synchronize below.
        unsafe { drv::memcpy_dtoh_async(&mut host, base + buffer.offset, self.stream.cu_stream()) }
            .map_err(RuntimeError::driver(what.clone()))?;
        self.sync(&what)?;
        Ok(decode(buffer.dtype, &host))
    }

    /// Times `replays` forwards after `warmup` untimed ones, in two passes:
    ///
    /// - GPU time: the replays are launched back to back (as an application
    ///   replaying the graph would), with CUDA events recorded on the stream
    ///   right before and after each launch;
    /// - host time of the launch call: each replay is launched onto an idle
    ///   stream (synchronized before), so the call's wall time is the launch
    ///   cost itself. (Back to back, a launch of a graph of ~1000 kernels
    ///   waits for queue space and takes about one forward.)
    pub fn time_replays(&mut self, warmup: usize, replays: usize) -> Result<Timing, RuntimeError> {
        self.bind()?;
        self.upload_inputs()?;
        for _ in 0..warmup {
            self.launch_forward()?;
        }
        self.sync("running the warm-up forwards")?;
        let timed = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(RuntimeError::driver("creating a timing event"))
        };
        let events = (0..replays)
            .map(|_| Ok((timed()?, timed()?)))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let mut timing = Timing::default();
        for (start, end) in &events {
            start
                .record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            self.launch_forward()?;
            end.record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
        }
        self.sync("running the timed forwards")?;
        for (start, end) in &events {
            let ms = start
                .elapsed_ms(end)
                .map_err(RuntimeError::driver("reading a timing event"))?;
            timing.gpu_ms.push(f64::from(ms));
        }
        for _ in 0..replays {
            let t = Instant::now();
            self.launch_forward()?;
            timing.launch_us.push(t.elapsed().as_secs_f64() * 1e6);
            self.sync("running the forwards timed on the host")?;
        }
        Ok(timing)
    }

    /// GPU milliseconds of every step of one forward, run step by step with
    /// CUDA events around each (no graph, so launch gaps are not included):
    /// where the time goes.
    pub fn profile_steps(&mut self) -> Result<Vec<f64>, RuntimeError> {
        self.bind()?;
        self.upload_inputs()?;
        self.launch_forward()?; // warm
        self.sync("warming up before profiling")?;
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(RuntimeError::driver("creating a timing event"))
        };
        let events = (0..=self.ops.len())
            .map(|_| event())
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        for (i, op) in self.ops.iter().enumerate() {
            events[i]
                .record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            self.enqueue(op, self.stream.cu_stream())
                .map_err(|e| self.step_failed(i, e))?;
        }
        events[self.ops.len()]
            .record(&self.stream)
            .map_err(RuntimeError::driver("recording a timing event"))?;
        self.sync("profiling the steps")?;
        events
            .windows(2)
            .map(|w| {
                w[0].elapsed_ms(&w[1])
                    .map(f64::from)
                    .map_err(RuntimeError::driver("reading a timing event"))
            })
            .collect()
    }

    /// The base addresses of the three regions.
    fn bases(&self) -> Bases {
        Bases {
            arena: self.arena.ptr(),
            weights: self.weights.ptr(),
            scratch: self.scratch.ptr(),
        }
    }

    /// Makes the engine's context current on this thread.
    fn bind(&self) -> Result<(), RuntimeError> {
        self.ctx
            .bind_to_thread()
            .map_err(RuntimeError::driver("binding the CUDA context"))
    }

    /// Waits for the stream; `what` says what was running.
    fn sync(&self, what: &str) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(RuntimeError::driver(what))
    }

    /// Enqueues copies of every staged input into the arena.
    fn upload_inputs(&self) -> Result<(), RuntimeError> {
        for binding in &self.artifact.schedule.inputs {
            let bytes = self
                .staged
                .get(&binding.name)
                .ok_or_else(|| RuntimeError::InputNotSet(binding.name.clone()))?;
            let buffer = self.buffer(binding.buffer)?;
            // SAFETY: the buffer holds `bytes.len()` bytes of the arena; the
            // staged bytes live as long as the engine.
            unsafe {
                drv::memcpy_htod_async(
                    self.arena.ptr() + buffer.offset,
                    bytes,
                    self.stream.cu_stream(),
                )
            }
            .map_err(RuntimeError::driver(format!(
                "copying input `{}`",
                binding.name
            )))?;
        }
        Ok(())
    }

    /// Enqueues one forward: the graph, or every step.
    fn launch_forward(&self) -> Result<(), RuntimeError> {
        match &self.graph {
            Some(graph) => graph
                .launch(self.stream.cu_stream())
                .map_err(RuntimeError::driver("launching the CUDA graph")),
            None => self.enqueue_all(),
        }
    }

    /// Enqueues every step.
    fn enqueue_all(&self) -> Result<(), RuntimeError> {
        self.enqueue_all_on(self.stream.cu_stream())
    }

    /// Enqueues every step on `stream`, a stream of the same (primary)
    /// context, which may be capturing: how a [`crate::Pipeline`] records
    /// the engine's forward into its own graph. The caller orders the
    /// engine's inputs before and its outputs after on that stream.
    pub(crate) fn enqueue_all_on(&self, stream: sys::CUstream) -> Result<(), RuntimeError> {
        for (i, op) in self.ops.iter().enumerate() {
            self.enqueue(op, stream)
                .map_err(|e| self.step_failed(i, e))?;
        }
        Ok(())
    }

    /// The CUDA context (the device's primary context, shared by every
    /// engine on the device).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device address and buffer of input `name` (in the arena).
    pub(crate) fn input_address(&self, name: &str) -> Result<(u64, Buffer), RuntimeError> {
        let buffer = self.input_buffer(name)?.clone();
        Ok((self.bases().of(buffer.region) + buffer.offset, buffer))
    }

    /// The device address and buffer of output `name` (in the arena).
    pub(crate) fn output_address(&self, name: &str) -> Result<(u64, Buffer), RuntimeError> {
        let buffer = self.output_buffer(name)?.clone();
        Ok((self.bases().of(buffer.region) + buffer.offset, buffer))
    }

    /// Runs every step, waiting after each, naming the one that fails.
    fn run_steps_checked(&self) -> Result<(), RuntimeError> {
        for (i, op) in self.ops.iter().enumerate() {
            self.enqueue(op, self.stream.cu_stream())
                .map_err(|e| self.step_failed(i, e))?;
            self.sync("running the step")
                .map_err(|e| self.step_failed(i, e))?;
        }
        Ok(())
    }

    fn step_failed(&self, index: usize, e: RuntimeError) -> RuntimeError {
        RuntimeError::StepFailed {
            index,
            step: self
                .artifact
                .schedule
                .steps
                .get(index)
                .map(describe_step)
                .unwrap_or_default(),
            source: Box::new(e),
        }
    }

    /// Enqueues one step on `stream`.
    fn enqueue(&self, op: &Op, stream: sys::CUstream) -> Result<(), RuntimeError> {
        match op {
            Op::Kernels(launches) => {
                for l in launches {
                    let mut values = l.params.clone();
                    let mut ptrs: Vec<*mut c_void> =
                        values.iter_mut().map(Param::as_kernel_param).collect();
                    // SAFETY: `func` belongs to the loaded module; the
                    // parameters match the kernel's signature as the schedule
                    // records it (or `attention_split` derives it) and point
                    // into `values`, alive for the call (the driver copies
                    // them at launch); every pointer parameter addresses the
                    // engine's memory.
                    unsafe {
                        drv::launch_kernel(
                            l.func,
                            (l.grid[0], l.grid[1], l.grid[2]),
                            (l.block[0], l.block[1], l.block[2]),
                            l.shared_bytes,
                            stream,
                            &mut ptrs,
                        )
                    }
                    .map_err(RuntimeError::driver("launching a kernel"))?;
                }
                Ok(())
            }
            Op::Gemm(plan) => {
                let blas = self
                    .blas
                    .as_ref()
                    .ok_or_else(|| RuntimeError::Device("no cuBLASLt handle".into()))?;
                // SAFETY: the plan's addresses were checked against their
                // buffers; the workspace holds `workspace_bytes` bytes.
                unsafe { plan.enqueue(blas, self.workspace.ptr(), self.workspace_bytes, stream) }
                    .map_err(RuntimeError::cublas("running a matmul"))
            }
            Op::Copy { dst, src, bytes } => {
                // SAFETY: both ranges were checked against their buffers.
                unsafe { drv::memcpy_dtod_async(*dst, *src, *bytes, stream) }
                    .map_err(RuntimeError::driver("copying device memory"))
            }
            Op::Conv(plan) => {
                let dnn = self
                    .dnn
                    .as_ref()
                    .ok_or_else(|| RuntimeError::Device("no cuDNN handle".into()))?;
                // SAFETY: the plan's addresses were checked against their
                // buffers; the workspace holds what every plan needs; the
                // stream is this engine's or a pipeline's on its context.
                unsafe {
                    plan.enqueue(
                        dnn,
                        self.conv_workspace.ptr(),
                        self.conv_workspace.bytes(),
                        stream,
                    )
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Nothing may be in flight when the memory and the graph go.
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
    }
}

/// Fails with [`RuntimeError::Device`] unless the device has room for
/// every region, the GEMM workspace, the workspace of attention split over
/// keys and (while loading) the staging buffer of the fp8 quantization.
fn check_memory(
    ctx: &Arc<CudaContext>,
    schedule: &Schedule,
    [staging_bytes, split_bytes]: [u64; 2],
    device_name: &str,
) -> Result<(), RuntimeError> {
    let parts = [
        ("arena", schedule.arena_bytes),
        ("weights", schedule.weight_bytes),
        ("scratch", schedule.scratch_bytes),
        ("workspace", schedule.gemm_workspace_bytes),
        ("attention split workspace", split_bytes),
        ("fp8 staging while loading", staging_bytes),
    ];
    let needed = parts.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
    let (free, total) = ctx
        .mem_get_info()
        .map_err(RuntimeError::driver("querying free memory"))?;
    if needed <= free as u64 {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    let detail: Vec<String> = parts
        .iter()
        .filter(|(what, bytes)| *bytes > 0 || matches!(*what, "arena" | "weights" | "workspace"))
        .map(|(what, bytes)| format!("{what} {:.2}", gb(*bytes)))
        .collect();
    Err(RuntimeError::Device(format!(
        "the artifact needs {:.2} GB of device memory ({}); {device_name} has {:.2} of {:.2} GB free",
        gb(needed),
        detail.join(", "),
        gb(free as u64),
        gb(total as u64)
    )))
}

/// The CUBIN of CUDA source `name` (the artifact's `kernels.cu`, or the
/// runtime's `quantize.cu`) for `arch`, cached or compiled, and loaded. A
/// cached CUBIN the driver rejects is deleted and compiled again.
pub(crate) fn load_module(
    ctx: &Arc<CudaContext>,
    name: &str,
    source: &str,
    arch: &str,
    options: &LoadOptions,
    say: &impl Fn(&str),
) -> Result<Module, RuntimeError> {
    let nvrtc_opts = nvrtc_options(arch, &options.cuda_include_dirs);
    let driver = driver_version()?;
    let started = Instant::now();
    let (cubin, origin) = cached_named(
        name,
        source,
        arch,
        &nvrtc_opts,
        driver,
        options.cache_dir.as_deref(),
        |w| eprintln!("fluxc-runtime: warning: {w}"),
    )?;
    match &origin {
        CubinOrigin::Cache(path) => say(&format!("{name}: cached CUBIN `{}`", path.display())),
        CubinOrigin::Compiled(path) => say(&format!(
            "{name}: compiled for {arch} with NVRTC in {:.2} s{}",
            started.elapsed().as_secs_f64(),
            path.as_ref()
                .map(|p| format!(", cached at `{}`", p.display()))
                .unwrap_or_default()
        )),
    }
    let what = format!("loading the compiled {name}");
    match Module::load(ctx, &cubin) {
        Ok(m) => Ok(m),
        Err(code) => {
            let CubinOrigin::Cache(path) = origin else {
                return Err(RuntimeError::driver(what)(drv::DriverError(code)));
            };
            eprintln!(
                "fluxc-runtime: warning: the driver rejected cached CUBIN `{}` ({code:?}); recompiling",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            let (cubin, _) = compile_named(name, source, arch, &nvrtc_opts)?;
            Module::load(ctx, &cubin).map_err(|c| RuntimeError::driver(what)(drv::DriverError(c)))
        }
    }
}

/// Every kernel the schedule launches, with its dynamic shared memory limit
/// raised where a launch needs more than 48 KiB, and its block sizes checked
/// against what it can run.
fn resolve_kernels(
    ctx: &Arc<CudaContext>,
    module: &Module,
    artifact: &Artifact,
) -> Result<BTreeMap<String, sys::CUfunction>, RuntimeError> {
    type Attr = sys::CUfunction_attribute;
    let schedule = &artifact.schedule;
    let invalid = |reason: String| RuntimeError::InvalidArtifact {
        dir: artifact.dir.clone(),
        reason,
    };
    let optin = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(RuntimeError::driver("querying the shared memory limit"))?;
    let mut functions = BTreeMap::new();
    for (name, shared) in kernels(schedule) {
        let func = module.function(&name).map_err(|code| match code {
            sys::CUresult::CUDA_ERROR_NOT_FOUND => invalid(format!(
                "kernel `{name}` named by the schedule is not defined in kernels.cu (is it extern \"C\"?)"
            )),
            other => RuntimeError::driver(format!("looking up kernel `{name}`"))(drv::DriverError(other)),
        })?;
        // SAFETY (all attribute calls): `func` belongs to the loaded module.
        let get = |attr| unsafe { drv::function::get_function_attribute(func, attr) };
        if shared > DEFAULT_MAX_DYNAMIC_SHARED {
            let static_bytes = get(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).unwrap_or(0);
            let value = i32::try_from(shared).unwrap_or(i32::MAX);
            unsafe {
                drv::function::set_function_attribute(
                    func,
                    Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    value,
                )
            }
            .map_err(|e| {
                RuntimeError::Device(format!(
                    "kernel `{name}` asks for {shared} bytes of dynamic shared memory (plus \
                     {static_bytes} static); the device allows {optin} per block: {e}"
                ))
            })?;
        }
        let max_threads = get(Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .map_err(RuntimeError::driver(format!("querying kernel `{name}`")))?;
        for (i, step) in schedule.steps.iter().enumerate() {
            let Some((_, block)) = step.launch_shape() else {
                continue;
            };
            let uses = matches!(step, Step::Launch(l) if l.kernel == name)
                || matches!(step, Step::Attention(a) if a.kernel == name);
            let threads: u64 = block.iter().map(|&d| u64::from(d)).product();
            if uses && threads > max_threads as u64 {
                return Err(RuntimeError::Step {
                    index: i,
                    step: describe_step(step),
                    reason: format!(
                        "a block of {threads} threads exceeds the {max_threads} this kernel can run \
                         (registers: {})",
                        get(Attr::CU_FUNC_ATTRIBUTE_NUM_REGS).unwrap_or(-1)
                    ),
                });
            }
        }
        functions.insert(name, func);
    }
    Ok(functions)
}

/// The names of the GEMMs of `schedule` whose plan in `ops` (one op per
/// step) dropped fast accumulation.
fn standard_accumulation_gemms<'a>(schedule: &'a Schedule, ops: &[Op]) -> Vec<&'a str> {
    schedule
        .steps
        .iter()
        .zip(ops)
        .filter_map(|(step, op)| match (step, op) {
            (Step::Gemm(g), Op::Gemm(plan)) if plan.standard_accumulation => Some(g.name.as_str()),
            _ => None,
        })
        .collect()
}

/// Every step of `schedule`, ready to enqueue; `splits` says how each
/// attention splits (`attention_split::plan_steps`), with its partial
/// results at the address given with it.
fn build_ops(
    schedule: &Schedule,
    bases: Bases,
    functions: &BTreeMap<String, sys::CUfunction>,
    blas: Option<&BlasHandle>,
    workspace_bytes: usize,
    dnn: Option<&CudnnHandle>,
    (splits, split_workspace): (&[Option<SplitPlan>], u64),
) -> Result<Vec<Op>, RuntimeError> {
    let at = |t| address(schedule, bases, t);
    schedule
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let fail = |reason: String| RuntimeError::Step {
                index: i,
                step: describe_step(step),
                reason,
            };
            let function = |name: &str| {
                functions
                    .get(name)
                    .copied()
                    .ok_or_else(|| fail(format!("kernel `{name}` was not loaded")))
            };
            let params = || {
                kernel_params(schedule, bases, step, &tensor_map::encode)
                    .map_err(fail)
                    .map(Option::unwrap_or_default)
            };
            let kernel = |name: &str, grid, block, shared_bytes| -> Result<Op, RuntimeError> {
                Ok(Op::Kernels(vec![KernelLaunch {
                    func: function(name)?,
                    grid,
                    block,
                    shared_bytes,
                    params: params()?,
                }]))
            };
            match step {
                Step::Launch(l) => kernel(&l.kernel, l.grid, l.block, l.shared_bytes),
                Step::Attention(a) => match splits.get(i).copied().flatten() {
                    None => kernel(&a.kernel, a.grid, a.block, a.shared_bytes),
                    Some(plan) => attention_split::launches(a, plan, &params()?, split_workspace)
                        .map_err(fail)?
                        .into_iter()
                        .map(|l| {
                            Ok(KernelLaunch {
                                func: function(&l.kernel)?,
                                grid: l.grid,
                                block: l.block,
                                shared_bytes: l.shared_bytes,
                                params: l.params,
                            })
                        })
                        .collect::<Result<_, RuntimeError>>()
                        .map(Op::Kernels),
                },
                Step::Copy(c) => Ok(Op::Copy {
                    dst: at(c.dst),
                    src: at(c.src),
                    bytes: usize::try_from(c.bytes).map_err(|_| fail("copy too large".into()))?,
                }),
                Step::Conv(c) => {
                    let dnn = dnn.ok_or_else(|| fail("no cuDNN handle".into()))?;
                    let addrs = ConvAddrs {
                        x: at(c.x),
                        w: at(c.w),
                        y: at(c.y),
                        bias: c.bias.map(at),
                    };
                    ConvPlan::new(dnn, c, addrs, CONV_WORKSPACE_LIMIT)
                        .map(Op::Conv)
                        .map_err(fail)
                }
                Step::Gemm(g) => {
                    let blas = blas.ok_or_else(|| fail("no cuBLASLt handle".into()))?;
                    let addrs = GemmAddrs {
                        a: at(g.a),
                        b: at(g.b),
                        d: at(g.d),
                        c: g.c.map(at),
                        bias: g
                            .bias
                            .map(|t| (at(t), schedule.buffers[t.buffer as usize].dtype)),
                        scales: g.scales.map(|s| (at(s.a), at(s.b))),
                    };
                    GemmPlan::new(blas, g, addrs, workspace_bytes)
                        .map(Op::Gemm)
                        .map_err(fail)
                }
            }
        })
        .collect()
}
