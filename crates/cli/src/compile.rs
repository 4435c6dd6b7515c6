//! `fluxc compile model.toml`: build the graph, run the pass pipeline,
//! generate kernels and the schedule, and write the artifact.
//!
//! `--dump-after <pass>` prints the IR right after that pass (any name of
//! `fluxc_passes::pipeline::STEPS`). `-o DIR` writes the artifact
//! (`manifest.json`, `schedule.json`, `kernels.cu`, `graph.txt`,
//! `fusion.txt`); without it the compile still runs to the end, so errors
//! show without writing anything. No GPU is needed. `--tuning-cache FILE`
//! gives every GEMM the algorithm `fluxc tune` recorded for it in that
//! cache (the rest keep cuBLASLt's heuristic choice at load time).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fluxc_artifact::{content_hash, CheckpointLayout, Step as ScheduleStep, WeightSource};
use fluxc_autotune::SearchOptions;
use fluxc_codegen::{check_output_dir, generate_with, write_artifact, CodegenOptions, Generated};
use fluxc_models::checkpoint::{resolve_derived_sources, CheckpointFormat, NameMap};
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::pipeline::{optimize, optimize_with_dump, Optimized, Step};
use fluxc_runtime::gemm_tuning::{tune_gemms, GemmTuneOptions};
use fluxc_runtime::kernel_bench::KernelBench;

use crate::kernel_tuning;

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
    /// A tuning cache whose kernel launches and GEMM algorithms the
    /// artifact takes (and, with `tune`, where measurements go).
    pub tuning_cache: Option<&'a Path>,
    /// Measure on this machine's GPU what the cache does not hold.
    pub tune: bool,
    /// Print the per-kernel and per-GEMM tuning report.
    pub report: bool,
}

/// Runs the compile.
pub fn run(args: &CompileArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(name) = args.dump_after {
        Step::from_name(name)?; // fail before the long work
    }
    if let Some(out) = args.out {
        check_output_dir(out)?;
    }
    // With --tune the measurements go to a cache (./tuning.json unless
    // named); without it, a named cache is only read.
    let cache_path = args
        .tuning_cache
        .map(Path::to_path_buf)
        .or_else(|| args.tune.then(|| PathBuf::from("tuning.json")));
    let mut cache = cache_path
        .as_deref()
        .map(fluxc_autotune::cache::load)
        .transpose()?;
    let cfg = ModelConfig::load(args.model)?;
    let graph = build_graph(&cfg).map_err(|e| {
        format!(
            "building the graph of `{}` failed: {e}",
            args.model.display()
        )
    })?;
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
    let bench = if args.tune {
        Some(tuning_bench()?)
    } else {
        None
    };
    let choices = match (&bench, cache.as_mut()) {
        (Some((bench, driver)), Some(cache)) => {
            eprintln!("  tuning the generated kernels on {}:", bench.device_name());
            let search = SearchOptions {
                check_all_directions: true,
                ..SearchOptions::default()
            };
            let (chosen, rows) = kernel_tuning::tune_kernels(
                &optimized,
                bench,
                driver,
                cache,
                &search,
                |d, t, r| {
                    eprintln!(
                        "    [{d}/{t}] {:>8.1} µs → {:>8.1} µs  {} (x{}, {} measured)",
                        r.default_us, r.best_us, r.ops, r.launches, r.measured
                    )
                },
            )?;
            if args.report {
                print!("{}", kernel_tuning::report(&rows));
            }
            chosen
        }
        (None, Some(cache)) => {
            let (chosen, found) = kernel_tuning::cached_kernels(&optimized, cache)?;
            eprintln!(
                "  tuning: {found} kernel(s) found in the cache, {} with a non-default launch",
                chosen.len()
            );
            chosen
        }
        _ => HashMap::new(),
    };
    let mut generated = generate_with(
        &optimized,
        &CodegenOptions {
            model_name: cfg.model.name.clone(),
            layouts: layouts(&optimized, NameMap::of(&cfg)?),
            reuse_memory: !args.no_memory_reuse,
        },
        &|k| choices.get(&k.source).copied(),
    )?;
    eprintln!("  codegen: {}", summary(&generated));
    if let (Some(cache), Some(path)) = (cache.as_mut(), cache_path.as_deref()) {
        if bench.is_some() {
            eprintln!("  tuning the GEMMs:");
            let run = tune_gemms(
                &generated.schedule,
                &GemmTuneOptions::default(),
                |d, t, g| {
                    eprintln!(
                        "    [{d}/{t}] {:>8.1} µs → {:>8.1} µs  {} (x{})",
                        g.default_us(),
                        g.best_us(),
                        g.name,
                        g.steps.len()
                    )
                },
            )?;
            let tuned = crate::tune::apply_run(&mut generated.schedule, &run);
            crate::tune::add_to_cache(cache, &run);
            if args.report {
                print!("{}", crate::tune::report(&run.gemms));
            }
            fluxc_autotune::cache::save(path, cache)?;
            eprintln!(
                "  tuning: {tuned} GEMM steps take tuned algorithms; measurements saved to `{}`",
                path.display()
            );
        } else {
            let applied = crate::tune::apply_cache(&mut generated.schedule, cache)
                .map_err(|e| format!("tuning cache `{}`: {e}", path.display()))?;
            eprintln!(
                "  tuning: {} of {} GEMM steps take tuned algorithms from `{}`{}",
                applied.tuned,
                applied.gemms,
                path.display(),
                applied
                    .device
                    .map(|d| format!(" (measured on {d})"))
                    .unwrap_or_default()
            );
        }
        let schedule = fluxc_codegen::schedule_json(&generated.schedule)?;
        generated.manifest.content_hash =
            content_hash(schedule.as_bytes(), generated.kernels_cu.as_bytes());
    }
    if let Some(out) = args.out {
        write_artifact(out, &generated)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The GPU context kernel tuning measures on, and the driver version its
/// cache records carry; an error saying `--tune` needs a GPU without one.
fn tuning_bench() -> Result<(KernelBench, String), Box<dyn std::error::Error>> {
    let include_dirs = fluxc_runtime::LoadOptions::default().cuda_include_dirs;
    let bench = KernelBench::new(0, fluxc_codegen::ARCH, &include_dirs)
        .map_err(|e| format!("--tune measures on the GPU: {e}"))?;
    let driver = fluxc_runtime::cuda::driver_version()?.to_string();
    Ok((bench, driver))
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
    let kernels = generated
        .kernels_cu
        .matches("extern \"C\" __global__")
        .count();
    format!(
        "{} steps: {gemms} GEMMs, {attention} attention, {launches} launches of {kernels} kernels; \
         arena {:.3} GB, weights {:.3} GB",
        s.steps.len(),
        s.arena_bytes as f64 / 1e9,
        s.weight_bytes as f64 / 1e9
    )
}
