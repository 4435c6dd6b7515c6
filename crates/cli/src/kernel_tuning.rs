//! Tuning the generated kernels during `fluxc compile --tune`.
//!
//! For every distinct kernel of the optimized graph
//! (`fluxc_codegen::launch::tunable_kernels`), coordinate descent
//! (`fluxc_autotune`) walks its launch space from the default
//! configuration. Every valid configuration of the space is rendered and
//! compiled up front as one NVRTC unit; a configuration the search asks for
//! is then run on random inputs (`fluxc_runtime::kernel_bench`), its outputs
//! compared with the default's (a variant that computes something else is
//! rejected, never chosen), and timed. The result is kept in the tuning
//! cache under the kernel's default source, the device and the driver, so a
//! later compile takes it without measuring (and a compile whose cache
//! holds every kernel measures none: [`uncached_kernels`]).
//!
//! A [`Budget`] bounds the whole run: once it is spent, the kernels left
//! keep their default launch, and a search it cut short keeps the default
//! too; neither is cached, so the next `--tune` measures them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use fluxc_artifact::{content_hash, tuning_key, TuningCache, TuningRecord};
use fluxc_autotune::{coordinate_descent, Budget, Config, Measurement, SearchOptions};
use fluxc_codegen::launch::{
    config_of, launch_config, translation_unit, tunable_kernels, variant, TunableKernel,
};
use fluxc_codegen::{KernelSource, LaunchConfig};
use fluxc_passes::pipeline::Optimized;
use fluxc_runtime::kernel_bench::{BenchLaunch, BenchParam, BenchResult, BenchTiming, KernelBench};
use fluxc_runtime::RuntimeError;

use crate::candidate_check::{measured, ReferenceOutputs};

/// The chosen launch configuration of each tuned kernel, by its default
/// source (what [`fluxc_codegen::generate_with`] is asked about).
pub type Choices = HashMap<String, LaunchConfig>;

/// Where a kernel's configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Searched now.
    Measured,
    /// Taken from the tuning cache.
    Cached,
    /// Left at the default: the budget was spent before its search started
    /// or finished.
    OutOfBudget,
}

impl Outcome {
    /// The reports' "from" column.
    pub fn source(self) -> &'static str {
        match self {
            Outcome::Measured => "measured",
            Outcome::Cached => "cache",
            Outcome::OutOfBudget => "default (budget spent)",
        }
    }

    /// The progress lines' note, with the configurations `measured`.
    pub fn progress(self, measured: usize) -> String {
        match self {
            Outcome::Measured => format!("{measured} measured"),
            Outcome::Cached => "cached".to_string(),
            Outcome::OutOfBudget => "budget spent: default".to_string(),
        }
    }
}

/// A time in µs for a report cell: `—` when it was never measured.
pub fn us_cell(t: f64) -> String {
    if t.is_finite() {
        format!("{t:.1}")
    } else {
        "—".to_string()
    }
}

/// What tuning one kernel found.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTuning {
    /// The kernel's ops, for reports (`layer_norm slice add_scalar mul`).
    pub ops: String,
    /// Steps of the forward that launch it.
    pub launches: usize,
    /// The default configuration's time, µs.
    pub default_us: f64,
    /// The chosen configuration's time, µs.
    pub best_us: f64,
    /// The chosen configuration.
    pub config: LaunchConfig,
    /// Configurations measured (0 when taken from the cache).
    pub measured: usize,
    /// Where the configuration came from.
    pub outcome: Outcome,
}

/// Largest relative L2 difference from the default's outputs a variant may
/// show: reductions in another order round f32 differently; outputs stored
/// in 16 or 8 bits then round the difference to a storage step now and then.
fn tolerance(params: &[BenchParam]) -> f64 {
    let narrow = params.iter().any(|p| p.written && p.dtype.size_bytes() < 4);
    if narrow {
        1e-2
    } else {
        1e-5
    }
}

/// The cache key of `kernel` on a device and driver.
fn key(kernel: &TunableKernel, device: &str, driver: &str) -> String {
    tuning_key(
        &content_hash(kernel.default.source.as_bytes(), b""),
        "kernel",
        device,
        driver,
    )
}

/// The launch configuration a cache record holds.
fn cached_config(record: &TuningRecord) -> Option<LaunchConfig> {
    Some(LaunchConfig {
        block_threads: u32::try_from(*record.config.get("block_threads")?).ok()?,
        threads_per_row: u32::try_from(*record.config.get("threads_per_row").unwrap_or(&0)).ok()?,
    })
}

/// The cached row of `kernel`, when `cache` holds a record of it under `key`.
fn cached_row(kernel: &TunableKernel, cache: &TuningCache, key: &str) -> Option<KernelTuning> {
    let record = cache.entries.get(key)?;
    Some(KernelTuning {
        ops: kernel.default.ops.join(" "),
        launches: kernel.launches,
        default_us: record.default_time_us,
        best_us: record.time_us,
        config: cached_config(record)?,
        measured: 0,
        outcome: Outcome::Cached,
    })
}

/// A kernel left at its default because the budget ran out (`default_us`:
/// its default's time, when the search measured it before stopping).
fn out_of_budget(kernel: &TunableKernel, default_us: f64, measured: usize) -> KernelTuning {
    KernelTuning {
        ops: kernel.default.ops.join(" "),
        launches: kernel.launches,
        default_us,
        best_us: default_us,
        config: kernel.default.config,
        measured,
        outcome: Outcome::OutOfBudget,
    }
}

/// The kernels of `optimized` that `cache` holds no record of for `device`
/// and `driver`, by their ops: what [`tune_kernels`] would measure.
pub fn uncached_kernels(
    optimized: &Optimized,
    cache: &TuningCache,
    device: &str,
    driver: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    Ok(tunable_kernels(optimized)?
        .iter()
        .filter(|k| cached_row(k, cache, &key(k, device, driver)).is_none())
        .map(|k| k.default.ops.join(" "))
        .collect())
}

/// Tunes every distinct generated kernel of `optimized` (taking what
/// `cache` already holds for this device and driver, adding what it
/// measures) within `budget`, calling `progress` after each. Returns the
/// chosen configuration of each kernel by its default source, and a report
/// row per kernel.
pub fn tune_kernels(
    optimized: &Optimized,
    bench: &KernelBench,
    driver: &str,
    cache: &mut TuningCache,
    search: &SearchOptions,
    budget: &Budget,
    mut progress: impl FnMut(usize, usize, &KernelTuning),
) -> Result<(Choices, Vec<KernelTuning>), Box<dyn std::error::Error>> {
    let device = bench.device_name();
    let kernels = tunable_kernels(optimized)?;
    let search = SearchOptions {
        deadline: budget.deadline(),
        ..search.clone()
    };
    let mut chosen = HashMap::new();
    let mut rows = Vec::new();
    for (i, kernel) in kernels.iter().enumerate() {
        let key = key(kernel, &device, driver);
        let row = match cached_row(kernel, cache, &key) {
            Some(row) => row,
            None if budget.exhausted() => out_of_budget(kernel, f64::NAN, 0),
            None => {
                let (row, complete) = measure_kernel(optimized, kernel, bench, &search)?;
                if complete {
                    cache.entries.insert(key, record(kernel, &row));
                    row
                } else {
                    out_of_budget(kernel, row.default_us, row.measured)
                }
            }
        };
        if row.config != kernel.default.config {
            chosen.insert(kernel.default.source.clone(), row.config);
        }
        progress(i + 1, kernels.len(), &row);
        rows.push(row);
    }
    Ok((chosen, rows))
}

fn record(kernel: &TunableKernel, row: &KernelTuning) -> TuningRecord {
    TuningRecord {
        name: kernel.default.ops.join(" "),
        config: BTreeMap::from([
            (
                "block_threads".to_string(),
                i64::from(row.config.block_threads),
            ),
            (
                "threads_per_row".to_string(),
                i64::from(row.config.threads_per_row),
            ),
        ]),
        time_us: row.best_us,
        default_time_us: row.default_us,
        measurements: row.measured,
    }
}

/// Coordinate descent over one kernel's space on the GPU; also whether the
/// search finished (the deadline did not cut it short).
fn measure_kernel(
    optimized: &Optimized,
    kernel: &TunableKernel,
    bench: &KernelBench,
    search: &SearchOptions,
) -> Result<(KernelTuning, bool), Box<dyn std::error::Error>> {
    // Every valid configuration, rendered and compiled together.
    let mut rendered: Vec<(Config, String, KernelSource)> = Vec::new();
    for (n, config) in kernel.space.all().into_iter().enumerate() {
        if let Ok(v) = variant(optimized, kernel, &config) {
            rendered.push((config, format!("fx_variant_{n}"), v));
        }
    }
    let named: Vec<(String, &KernelSource)> =
        rendered.iter().map(|(_, n, v)| (n.clone(), v)).collect();
    let variants = bench.load(&translation_unit(&named))?;
    let params: Vec<BenchParam> = kernel
        .params
        .iter()
        .map(|p| BenchParam {
            dtype: p.dtype,
            elements: p.elements,
            written: p.written,
        })
        .collect();
    let prepared = bench.prepare(&params, kernel.default.scratch_words)?;
    let failure: RefCell<Option<RuntimeError>> = RefCell::new(None);
    let reference = ReferenceOutputs::new(tolerance(&params));
    let run = |config: &Config| -> Measurement {
        let Some((_, name, v)) = rendered.iter().find(|(c, _, _)| c == config) else {
            return Measurement::Rejected("not a valid configuration of this kernel".into());
        };
        let launch = BenchLaunch {
            name: name.clone(),
            grid: v.grid,
            block: v.block,
            scratch_words: v.scratch_words,
        };
        let run = bench.run(&variants, &prepared, &launch, BenchTiming::default());
        let result: BenchResult = match measured(run, &failure) {
            Ok(r) => r,
            Err(rejected) => return rejected,
        };
        if let Err(rejected) = reference.check(result.outputs) {
            return rejected;
        }
        Measurement::Time(result.us)
    };
    // The search measures its start first: the default is the reference.
    let result = coordinate_descent(&kernel.space, kernel.default_config.clone(), search, run);
    if let Some(e) = failure.into_inner() {
        return Err(Box::new(e));
    }
    let result =
        result.map_err(|e| format!("tuning a kernel ({}): {e}", kernel.default.ops.join(" ")))?;
    let row = KernelTuning {
        ops: kernel.default.ops.join(" "),
        launches: kernel.launches,
        default_us: result.start_time,
        best_us: result.best_time,
        config: launch_config(&kernel.space, &result.best),
        measured: result.measurements.len(),
        outcome: Outcome::Measured,
    };
    Ok((row, !result.out_of_time))
}

/// A markdown table of the kernels' default and tuned times, and where
/// each configuration came from; kernels the budget left unmeasured show
/// `—` and are left out of the per-forward sums.
pub fn report(rows: &[KernelTuning]) -> String {
    let mut out = String::from(
        "| kernel | launches | default µs | tuned µs | block | threads/row | measured | from |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let us = us_cell;
    let (mut default, mut best, mut unmeasured) = (0.0, 0.0, 0);
    for r in rows {
        let from = r.outcome.source();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {from} |\n",
            r.ops,
            r.launches,
            us(r.default_us),
            us(r.best_us),
            r.config.block_threads,
            r.config.threads_per_row,
            r.measured
        ));
        if r.default_us.is_finite() && r.best_us.is_finite() {
            default += r.launches as f64 * r.default_us;
            best += r.launches as f64 * r.best_us;
        } else {
            unmeasured += 1;
        }
    }
    out.push_str(&format!(
        "\nper forward: {:.2} ms in generated kernels by default, {:.2} ms tuned",
        default / 1e3,
        best / 1e3
    ));
    if unmeasured > 0 {
        out.push_str(&format!(" ({unmeasured} kernel(s) never timed left out)"));
    }
    out.push('\n');
    out
}

/// The configurations a tuning cache holds for `optimized`'s kernels
/// (without a GPU: the records of the one device the cache measured these
/// kernels on; several devices is an error naming them). Returns the
/// chosen configurations by default source, how many kernels had a record,
/// and how many kernels there are.
pub fn cached_kernels(
    optimized: &Optimized,
    cache: &TuningCache,
) -> Result<(Choices, usize, usize), Box<dyn std::error::Error>> {
    let kernels = tunable_kernels(optimized)?;
    let records = |k: &TunableKernel| {
        cache.records_for(&content_hash(k.default.source.as_bytes(), b""), "kernel")
    };
    crate::tune::single_device(
        kernels
            .iter()
            .flat_map(|k| records(k).map(|(d, _)| d).collect::<Vec<_>>()),
        "this model's kernels",
    )?;
    let mut chosen = HashMap::new();
    let mut found = 0;
    for kernel in &kernels {
        for (_, record) in records(kernel) {
            if let Some(config) = cached_config(record) {
                found += 1;
                if config != kernel.default.config && config_of(&kernel.space, config).is_some() {
                    chosen.insert(kernel.default.source.clone(), config);
                }
            }
        }
    }
    Ok((chosen, found, kernels.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_artifact::ElemType;
    use fluxc_runtime::bench::rel_l2;

    #[test]
    fn narrow_outputs_get_a_looser_tolerance() {
        let p = |dtype, written| BenchParam {
            dtype,
            elements: 4,
            written,
        };
        assert_eq!(
            tolerance(&[p(ElemType::Bf16, false), p(ElemType::F32, true)]),
            1e-5
        );
        assert_eq!(
            tolerance(&[p(ElemType::F32, false), p(ElemType::Bf16, true)]),
            1e-2
        );
        assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan());
    }

    #[test]
    fn cached_records_give_their_configuration() {
        let row = KernelTuning {
            ops: "layer_norm".into(),
            launches: 19,
            default_us: 10.0,
            best_us: 8.0,
            config: LaunchConfig {
                block_threads: 512,
                threads_per_row: 128,
            },
            measured: 7,
            outcome: Outcome::Measured,
        };
        let r = TuningRecord {
            name: row.ops.clone(),
            config: BTreeMap::from([
                ("block_threads".to_string(), 512),
                ("threads_per_row".to_string(), 128),
            ]),
            time_us: 8.0,
            default_time_us: 10.0,
            measurements: 7,
        };
        assert_eq!(cached_config(&r), Some(row.config));
        let text = report(&[row]);
        assert!(
            text.contains("| layer_norm | 19 | 10.0 | 8.0 | 512 | 128 | 7 | measured |"),
            "{text}"
        );
        assert!(
            text.contains("0.19 ms in generated kernels by default, 0.15 ms tuned"),
            "{text}"
        );
    }

    #[test]
    fn a_full_cache_leaves_no_kernel_to_measure() {
        let cfg =
            fluxc_models::ModelConfig::load(&fluxc_models::config::preset_path("tiny-schnell"))
                .unwrap();
        let graph = fluxc_models::build_graph(&cfg).unwrap();
        let optimized = fluxc_passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
        let kernels = tunable_kernels(&optimized).unwrap();
        let mut cache = TuningCache::default();
        let uncached = |cache: &TuningCache, device: &str| {
            uncached_kernels(&optimized, cache, device, "13000")
                .unwrap()
                .len()
        };
        assert_eq!(uncached(&cache, "NVIDIA H200"), kernels.len());
        for kernel in &kernels {
            let row = out_of_budget(kernel, 3.0, 1);
            let key = key(kernel, "NVIDIA H200", "13000");
            cache.entries.insert(key, record(kernel, &row));
        }
        assert_eq!(
            uncached(&cache, "NVIDIA H200"),
            0,
            "a warm cache measures nothing"
        );
        assert_eq!(uncached(&cache, "NVIDIA B200"), kernels.len());
    }

    #[test]
    fn the_report_says_what_the_budget_left_at_the_default() {
        let kernels = |ops: &str, outcome, default_us| KernelTuning {
            ops: ops.into(),
            launches: 2,
            default_us,
            best_us: default_us,
            config: LaunchConfig {
                block_threads: 256,
                threads_per_row: 0,
            },
            measured: 0,
            outcome,
        };
        let text = report(&[
            kernels("silu", Outcome::Cached, 5.0),
            kernels("gelu", Outcome::OutOfBudget, 4.0),
            kernels("add", Outcome::OutOfBudget, f64::NAN),
        ]);
        assert!(
            text.contains("| silu | 2 | 5.0 | 5.0 | 256 | 0 | 0 | cache |"),
            "{text}"
        );
        assert!(
            text.contains("| gelu | 2 | 4.0 | 4.0 | 256 | 0 | 0 | default (budget spent) |"),
            "{text}"
        );
        assert!(
            text.contains("| add | 2 | — | — | 256 | 0 | 0 | default (budget spent) |"),
            "{text}"
        );
        assert!(
            text.contains("0.02 ms in generated kernels by default, 0.02 ms tuned (1 kernel(s) never timed left out)"),
            "{text}"
        );
    }
}
