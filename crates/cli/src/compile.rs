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

use std::collections::BTreeMap;
use std::path::Path;

use fluxc_artifact::{content_hash, CheckpointLayout, Step as ScheduleStep, WeightSource};
use fluxc_codegen::{check_output_dir, generate, write_artifact, CodegenOptions, Generated};
use fluxc_models::checkpoint::{resolve_derived_sources, CheckpointFormat, NameMap};
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::pipeline::{optimize, optimize_with_dump, Optimized, Step};

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
    /// A tuning cache whose GEMM algorithms the schedule takes.
    pub tuning_cache: Option<&'a Path>,
}

/// Runs the compile.
pub fn run(args: &CompileArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(name) = args.dump_after {
        Step::from_name(name)?; // fail before the long work
    }
    if let Some(out) = args.out {
        check_output_dir(out)?;
    }
    let cache = args
        .tuning_cache
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
    let mut generated = generate(
        &optimized,
        &CodegenOptions {
            model_name: cfg.model.name.clone(),
            layouts: layouts(&optimized, NameMap::of(&cfg)?),
            reuse_memory: !args.no_memory_reuse,
        },
    )?;
    eprintln!("  codegen: {}", summary(&generated));
    if let (Some(cache), Some(path)) = (cache, args.tuning_cache) {
        let applied = crate::tune::apply_cache(&mut generated.schedule, &cache)
            .map_err(|e| format!("tuning cache `{}`: {e}", path.display()))?;
        let schedule = fluxc_codegen::schedule_json(&generated.schedule)?;
        generated.manifest.content_hash =
            content_hash(schedule.as_bytes(), generated.kernels_cu.as_bytes());
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
    if let Some(out) = args.out {
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
