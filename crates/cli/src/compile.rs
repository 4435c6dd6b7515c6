//! `fluxc compile model.toml`: build the graph, run the pass pipeline,
//! generate kernels and the schedule, and write the artifact.
//!
//! `--dump-after <pass>` prints the IR right after that pass (any name of
//! `fluxc_passes::pipeline::STEPS`). `-o DIR` writes the artifact
//! (`manifest.json`, `schedule.json`, `kernels.cu`, `graph.txt`,
//! `fusion.txt`); without it the compile still runs to the end, so errors
//! show without writing anything. No GPU is needed. A tuning cache
//! (`--tuning-cache FILE` or `[autotune] cache`) gives every kernel and
//! GEMM the launch or algorithm recorded for it (the rest keep their
//! defaults); `--tune` measures what the cache lacks on this machine's GPU
//! within the `[autotune]` budget (`compile_tuning`, `tune_settings`). In
//! an fp8 build, the linear shapes whose bf16 GEMM the tuning measured (or
//! the cache records as) faster stay bf16 (`fp8_choice`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fluxc_artifact::{content_hash, CheckpointLayout, Step as ScheduleStep, WeightSource};
use fluxc_codegen::{
    check_output_dir, generate_with, write_artifact, Choices, CodegenOptions, Generated,
};
use fluxc_models::checkpoint::{resolve_derived_sources, CheckpointFormat, NameMap};
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::pipeline::{optimize, optimize_with_dump, Optimized, Step};
use fluxc_passes::Fp8Mode;

use crate::compile_tuning::{self, GpuTuning};
use crate::tune_settings::{TuneFlags, TuneSettings};

/// What `fluxc compile` was asked to do.
pub struct CompileArgs<'a> {
    /// The model.toml.
    pub model: &'a Path,
    /// Where to write the artifact.
    pub out: Option<&'a Path>,
    /// Pass to dump the IR after.
    pub dump_after: Option<&'a str>,
    /// Give every buffer its own bytes (debugging: intermediates stay readable).
    pub no_memory_reuse: bool,
    /// `--tune`, `--tuning-cache` and the flags overriding `[autotune]`.
    pub tuning: TuneFlags<'a>,
    /// Print the per-kernel and per-GEMM tuning report.
    pub report: bool,
}

/// Runs the compile: a pipeline file (`architecture = "flux-pipeline"`)
/// goes to [`crate::compile_pipeline`], any other model.toml is compiled
/// into one artifact.
pub fn run(args: &CompileArgs) -> Result<(), Box<dyn std::error::Error>> {
    if fluxc_models::pipeline::is_pipeline_file(args.model) {
        return crate::compile_pipeline::run(args);
    }
    if let Some(name) = args.dump_after {
        Step::from_name(name)?; // fail before the long work
    }
    if let Some(out) = args.out {
        check_output_dir(out)?;
    }
    let cfg = ModelConfig::load(args.model)?;
    compile_model(&cfg, args.model, args.out, args)
}

/// Compiles `cfg` (read from `model`, which relative paths of its
/// `[autotune]` are taken from) and writes the artifact to `out`, if given;
/// `args` gives the flags.
pub fn compile_model(
    cfg: &ModelConfig,
    model: &Path,
    out: Option<&Path>,
    args: &CompileArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let settings = TuneSettings::resolve(&cfg.autotune, model, &args.tuning)?;
    let mut cache = settings
        .cache
        .as_deref()
        .map(fluxc_autotune::cache::load)
        .transpose()?;
    let graph = build_graph(cfg)
        .map_err(|e| format!("building the graph of `{}` failed: {e}", model.display()))?;
    let options = cfg.passes.options();
    let (optimized, dump) = match args.dump_after {
        Some(name) => {
            let (optimized, dump) = optimize_with_dump(graph, &options, name)?;
            (optimized, Some(dump))
        }
        None => (optimize(graph, &options)?, None),
    };
    for line in &optimized.log {
        eprintln!("  {line}");
    }
    if let Some(dump) = dump {
        print!("{dump}");
    }
    if settings.tune && !settings.coordinate_descent {
        eprintln!(
            "  tuning: coordinate descent is off ([autotune] coordinate_descent or \
             --coordinate-descent): nothing is measured; what the cache holds applies, the rest \
             keeps its defaults"
        );
    }
    let mut gpu = if settings.measures() {
        Some(GpuTuning::start(&settings, args.report)?)
    } else {
        None
    };
    // fp8 builds: the linear shapes measured faster in bf16 stay bf16.
    let optimized = if options.fp8 == Fp8Mode::Off {
        optimized
    } else {
        match cache.as_mut() {
            Some(cache) => {
                let keep =
                    compile_tuning::fp8_choices(cfg, &options, &optimized, gpu.as_mut(), cache)?;
                if keep.is_empty() {
                    optimized
                } else {
                    let mut options = options.clone();
                    options.fp8_policy.bf16_shapes = keep;
                    optimize(build_graph(cfg)?, &options)?
                }
            }
            None => optimized,
        }
    };
    let (kernels, attention) = match (gpu.as_mut(), cache.as_mut()) {
        (Some(gpu), Some(cache)) => (
            gpu.kernels(&optimized, cache)?,
            gpu.attention(&optimized, cache)?,
        ),
        (None, Some(cache)) => (
            compile_tuning::cached_kernels(&optimized, cache)?,
            compile_tuning::cached_attention(&optimized, cache)?,
        ),
        _ => (HashMap::new(), HashMap::new()),
    };
    let mut generated = generate_with(
        &optimized,
        &CodegenOptions {
            model_name: cfg.model.name.clone(),
            layouts: layouts(&optimized, NameMap::of(cfg)?),
            reuse_memory: !args.no_memory_reuse,
        },
        &Choices {
            kernel: &|k| kernels.get(&k.source).copied(),
            attention: &|dims| attention.get(dims).copied(),
        },
    )?;
    eprintln!("  codegen: {}", summary(&generated));
    if let (Some(cache), Some(path)) = (cache.as_mut(), settings.cache.as_deref()) {
        match gpu.as_mut() {
            Some(gpu) => {
                gpu.gemms(&mut generated.schedule, cache)?;
                fluxc_autotune::cache::save(path, cache)?;
                eprintln!("  tuning: measurements saved to `{}`", path.display());
                gpu.finish();
            }
            None => compile_tuning::cached_gemms(
                &mut generated.schedule,
                cache,
                &path.display().to_string(),
            )?,
        }
        let schedule = fluxc_codegen::schedule_json(&generated.schedule)?;
        generated.manifest.content_hash =
            content_hash(schedule.as_bytes(), generated.kernels_cu.as_bytes());
    }
    if let Some(out) = out {
        write_artifact(out, &generated)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Each checkpoint layout's derivation of every weight (a layout the model
/// cannot be loaded from is left out).
fn layouts(
    optimized: &Optimized,
    map: NameMap,
) -> Vec<(CheckpointLayout, BTreeMap<String, WeightSource>)> {
    let bundle: Vec<String> = map
        .bundle_prefixes()
        .iter()
        .map(|p| p.to_string())
        .collect();
    [
        (CheckpointFormat::Diffusers, "diffusers", vec![]),
        (CheckpointFormat::Bfl, "bfl", bundle),
    ]
    .into_iter()
    .filter_map(|(format, name, strip_prefixes)| {
        let sources =
            resolve_derived_sources(&optimized.graph, &optimized.weights, format, map).ok()?;
        let layout = CheckpointLayout {
            name: name.to_string(),
            strip_prefixes,
        };
        Some((layout, sources))
    })
    .collect()
}

/// `312 GEMMs, 57 attention, 23 kernels (614 launches), arena 1.9 GB, weights 23.8 GB`.
pub fn summary(generated: &Generated) -> String {
    let s = &generated.schedule;
    let count = |f: fn(&ScheduleStep) -> bool| s.steps.iter().filter(|step| f(step)).count();
    let gemms = count(|st| matches!(st, ScheduleStep::Gemm(_)));
    let attention = count(|st| matches!(st, ScheduleStep::Attention(_)));
    let launches = count(|st| matches!(st, ScheduleStep::Launch(_)));
    let convs = count(|st| matches!(st, ScheduleStep::Conv(_)));
    let kernels = generated
        .kernels_cu
        .matches("extern \"C\" __global__")
        .count();
    // Convolutions only when cuDNN runs some (keeps the usual line as it was).
    let convs = if convs > 0 {
        format!("{convs} cuDNN convolutions, ")
    } else {
        String::new()
    };
    format!(
        "{} steps: {gemms} GEMMs, {convs}{attention} attention, {launches} launches of {kernels} \
         kernels; arena {:.3} GB, weights {:.3} GB",
        s.steps.len(),
        s.arena_bytes as f64 / 1e9,
        s.weight_bytes as f64 / 1e9
    )
}
