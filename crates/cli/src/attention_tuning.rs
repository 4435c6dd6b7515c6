//! Tuning the tensor-core attention kernel's tiles during `fluxc compile
//! --tune`.
//!
//! For every distinct attention problem of the optimized graph
//! (`fluxc_codegen::launch::tunable_attention`: batch, heads, lengths, head
//! width), coordinate descent (`fluxc_autotune`) walks the kernel's tile
//! space (keys per tile, K/V stages) from the default. Every valid
//! configuration is rendered and compiled up front as one NVRTC unit; a
//! configuration the search asks for runs on random q, k and v
//! (`fluxc_runtime::attention_bench`), its output is compared with the
//! default's (tiles change only the order of f32 sums and where P is
//! rounded to bf16, so anything beyond [`TOLERANCE`] is a broken variant,
//! rejected) and timed. Results are cached like the generated kernels'
//! (`kernel_tuning`): keyed by the default kernel's source, the problem,
//! the device and the driver; a compile without a GPU takes the cache's
//! records ([`cached_attention`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use fluxc_artifact::{content_hash, tuning_key, TuningCache, TuningRecord};
use fluxc_autotune::{coordinate_descent, Budget, Config, Measurement, SearchOptions};
use fluxc_codegen::attention::{config_from, config_of};
use fluxc_codegen::launch::{attention_variant, tunable_attention, TunableAttention};
use fluxc_codegen::AttentionConfig;
use fluxc_passes::pipeline::Optimized;
use fluxc_runtime::attention_bench::{
    AttentionBench, AttentionProblem, AttentionResult, AttentionVariant,
};
use fluxc_runtime::bench::BenchTiming;
use fluxc_runtime::RuntimeError;

use crate::candidate_check::{measured, ReferenceOutputs};
use crate::kernel_tuning::{us_cell, Outcome};

type Error = Box<dyn std::error::Error>;

/// Largest relative L2 difference from the default configuration's output.
pub const TOLERANCE: f64 = 2e-2;

/// The chosen tile configuration of each tuned problem, by its
/// `[batch, heads, seq_q, seq_kv, head_dim]`.
pub type AttentionChoices = HashMap<[u32; 5], AttentionConfig>;

/// What tuning one attention problem found.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionTuning {
    /// `[batch, heads, seq_q, seq_kv, head_dim]`.
    pub dims: [u32; 5],
    /// Steps of the forward that run it.
    pub launches: usize,
    /// The default configuration's time, µs.
    pub default_us: f64,
    /// The chosen configuration's time, µs.
    pub best_us: f64,
    /// The chosen configuration.
    pub config: AttentionConfig,
    /// Configurations measured (0 when taken from the cache).
    pub measured: usize,
    /// Where the configuration came from.
    pub outcome: Outcome,
}

/// The cache's shape field of a problem: `attention 1x24x4608x4608x128`.
fn shape(dims: &[u32; 5]) -> String {
    format!(
        "attention {}x{}x{}x{}x{}",
        dims[0], dims[1], dims[2], dims[3], dims[4]
    )
}

fn hash(problem: &TunableAttention) -> String {
    content_hash(problem.default.source.as_bytes(), b"")
}

/// The cache key of `problem` on a device and driver.
fn key(problem: &TunableAttention, device: &str, driver: &str) -> String {
    tuning_key(&hash(problem), &shape(&problem.dims), device, driver)
}

/// The configuration a cache record holds.
fn cached_config(record: &TuningRecord) -> Option<AttentionConfig> {
    Some(AttentionConfig {
        block_n: u32::try_from(*record.config.get("block_n")?).ok()?,
        stages: u32::try_from(*record.config.get("stages")?).ok()?,
    })
}

fn record(row: &AttentionTuning) -> TuningRecord {
    TuningRecord {
        name: shape(&row.dims),
        config: BTreeMap::from([
            ("block_n".to_string(), i64::from(row.config.block_n)),
            ("stages".to_string(), i64::from(row.config.stages)),
        ]),
        time_us: row.best_us,
        default_time_us: row.default_us,
        measurements: row.measured,
    }
}

fn row(problem: &TunableAttention, default_us: f64, best_us: f64) -> AttentionTuning {
    AttentionTuning {
        dims: problem.dims,
        launches: problem.launches,
        default_us,
        best_us,
        config: AttentionConfig::default(),
        measured: 0,
        outcome: Outcome::OutOfBudget,
    }
}

/// Tunes every distinct attention problem of `optimized` (taking what
/// `cache` holds for this device and driver, adding what it measures)
/// within `budget`, calling `progress` after each.
#[allow(clippy::too_many_arguments)]
pub fn tune_attention(
    optimized: &Optimized,
    bench: &AttentionBench,
    device: &str,
    driver: &str,
    cache: &mut TuningCache,
    search: &SearchOptions,
    budget: &Budget,
    mut progress: impl FnMut(usize, usize, &AttentionTuning),
) -> Result<(AttentionChoices, Vec<AttentionTuning>), Error> {
    let problems = tunable_attention(optimized)?;
    let search = SearchOptions {
        deadline: budget.deadline(),
        ..search.clone()
    };
    let mut chosen = HashMap::new();
    let mut rows = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        let key = key(problem, device, driver);
        let cached = cache
            .entries
            .get(&key)
            .and_then(|r| Some((r, cached_config(r)?)));
        let row = match cached {
            Some((record, config)) => AttentionTuning {
                config,
                outcome: Outcome::Cached,
                ..row(problem, record.default_time_us, record.time_us)
            },
            None if budget.exhausted() => row(problem, f64::NAN, f64::NAN),
            None => {
                let (measured, complete) = measure(problem, bench, &search)?;
                if complete {
                    cache.entries.insert(key, record(&measured));
                    measured
                } else {
                    AttentionTuning {
                        measured: measured.measured,
                        ..row(problem, measured.default_us, measured.default_us)
                    }
                }
            }
        };
        if row.config != AttentionConfig::default() {
            chosen.insert(problem.dims, row.config);
        }
        progress(i + 1, problems.len(), &row);
        rows.push(row);
    }
    Ok((chosen, rows))
}

/// Coordinate descent over one problem's tile space on the GPU; also
/// whether the search finished (the deadline did not cut it short).
fn measure(
    problem: &TunableAttention,
    bench: &AttentionBench,
    search: &SearchOptions,
) -> Result<(AttentionTuning, bool), Error> {
    let mut rendered = Vec::new();
    for config in problem.space.all() {
        if let Ok(kernel) = attention_variant(problem, &config) {
            rendered.push((config, kernel));
        }
    }
    let unit: String = rendered
        .iter()
        .map(|(_, k)| k.source.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let variants = bench.load(&unit)?;
    let [batch, heads, seq_q, seq_kv, head_dim] = problem.dims;
    let prepared = bench.prepare(AttentionProblem {
        batch,
        heads,
        seq_q,
        seq_kv,
        head_dim,
        scale: problem.scale,
    })?;
    let failure: RefCell<Option<RuntimeError>> = RefCell::new(None);
    let reference = ReferenceOutputs::new(TOLERANCE);
    let run = |config: &Config| -> Measurement {
        let Some((_, kernel)) = rendered.iter().find(|(c, _)| c == config) else {
            return Measurement::Rejected(format!(
                "{:?} is not a valid configuration here (shared memory)",
                config_from(&problem.space, config)
            ));
        };
        let fluxc_artifact::AttentionOperands::TensorMaps { q_rows, kv_rows } = kernel.operands
        else {
            return Measurement::Rejected("not a tensor-map kernel".into());
        };
        let variant = AttentionVariant {
            name: kernel.name.clone(),
            grid: fluxc_codegen::attention::grid(kernel, batch, heads, seq_q),
            threads: kernel.threads,
            shared_bytes: kernel.shared_bytes,
            q_rows,
            kv_rows,
        };
        let run = bench.run(&variants, &prepared, &variant, BenchTiming::default());
        let result: AttentionResult = match measured(run, &failure) {
            Ok(r) => r,
            Err(rejected) => return rejected,
        };
        if let Err(rejected) = reference.check(vec![result.output]) {
            return rejected;
        }
        Measurement::Time(result.us)
    };
    // The search measures its start first: the default is the reference.
    let result = coordinate_descent(&problem.space, problem.default_config.clone(), search, run);
    if let Some(e) = failure.into_inner() {
        return Err(Box::new(e));
    }
    let result = result.map_err(|e| format!("tuning {}: {e}", shape(&problem.dims)))?;
    let row = AttentionTuning {
        dims: problem.dims,
        launches: problem.launches,
        default_us: result.start_time,
        best_us: result.best_time,
        config: config_from(&problem.space, &result.best),
        measured: result.measurements.len(),
        outcome: Outcome::Measured,
    };
    Ok((row, !result.out_of_time))
}

/// The configurations a tuning cache holds for `optimized`'s attention
/// problems, without a GPU (the records of the one device the cache
/// measured them on; several devices is an error naming them). Returns
/// the choices, how many problems had a record, and how many there are.
pub fn cached_attention(
    optimized: &Optimized,
    cache: &TuningCache,
) -> Result<(AttentionChoices, usize, usize), Error> {
    let problems = tunable_attention(optimized)?;
    let records = |p: &TunableAttention| cache.records_for(&hash(p), &shape(&p.dims));
    crate::tune::single_device(
        problems
            .iter()
            .flat_map(|p| records(p).map(|(d, _)| d).collect::<Vec<_>>()),
        "this model's attention",
    )?;
    let mut chosen = HashMap::new();
    let mut found = 0;
    for problem in &problems {
        for (_, record) in records(problem) {
            if let Some(config) = cached_config(record) {
                found += 1;
                if config != AttentionConfig::default()
                    && config_of(&problem.space, config).is_some()
                {
                    chosen.insert(problem.dims, config);
                }
            }
        }
    }
    Ok((chosen, found, problems.len()))
}

/// A markdown table of each attention problem's default and tuned times.
pub fn report(rows: &[AttentionTuning]) -> String {
    let mut out = String::from(
        "| attention [b, h, sq, skv, d] | launches | default µs | tuned µs | keys per tile | \
         stages | measured | from |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let us = us_cell;
    for r in rows {
        let from = r.outcome.source();
        out.push_str(&format!(
            "| {:?} | {} | {} | {} | {} | {} | {} | {from} |\n",
            r.dims,
            r.launches,
            us(r.default_us),
            us(r.best_us),
            r.config.block_n,
            r.config.stages,
            r.measured
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_their_configuration() {
        let row = AttentionTuning {
            dims: [1, 24, 4608, 4608, 128],
            launches: 57,
            default_us: 430.0,
            best_us: 420.0,
            config: AttentionConfig {
                block_n: 128,
                stages: 3,
            },
            measured: 3,
            outcome: Outcome::Measured,
        };
        let r = record(&row);
        assert_eq!(r.name, "attention 1x24x4608x4608x128");
        assert_eq!(cached_config(&r), Some(row.config));
        let table = report(&[row]);
        assert!(
            table.contains(
                "| [1, 24, 4608, 4608, 128] | 57 | 430.0 | 420.0 | 128 | 3 | 3 | measured |"
            ),
            "{table}"
        );
    }

    #[test]
    fn the_space_has_every_valid_configuration() {
        let space = fluxc_codegen::attention::space();
        assert_eq!(space.all().len(), 4);
    }
}
