//! Choosing, by measurement, which linears stay bf16 in an fp8 build
//! (`fluxc compile --tune` with `[passes] fp8` on).
//!
//! fp8 does not pay for every shape: a GEMM with few rows is bound by its
//! weight's bytes or by launch latency, where fp8's doubled tensor-core rate
//! buys nothing. For every distinct `[rows, in, out]` of the linears the fp8
//! policy selected, the fp8 GEMM (as the fp8 build schedules it: e4m3
//! operands, the build's scales and epilogue) and the bf16 GEMM of the same
//! linear (as a build with fp8 off schedules it) are timed on the GPU
//! (`fluxc_runtime::gemm_tuning`, the heuristic's candidates, the best of
//! each); a shape whose bf16 GEMM is faster by more than the noise stays
//! bf16 (`Fp8Policy::bf16_shapes`). Only the GEMMs are compared: the
//! activation's quantization is fused into the kernel that produces it, so
//! it costs little beyond the bytes it saves.
//!
//! The decisions are kept in the tuning cache (shape `fp8-choice`, keyed by
//! the linear's shape and the build's fp8 mode), so a later compile, with or
//! without a GPU, takes them without measuring.

use std::collections::BTreeMap;

use fluxc_artifact::{content_hash, tuning_key, Gemm, Schedule, Step, TuningCache, TuningRecord};
use fluxc_passes::pipeline::Optimized;
use fluxc_passes::PassOptions;
use fluxc_runtime::gemm_tuning::{gemm_key, tune_gemms, GemmTuneOptions};

use crate::kernel_tuning::us_cell;

type Error = Box<dyn std::error::Error>;

/// The best time of each shape's GEMM, and the device and driver that ran
/// them.
type Timed = (BTreeMap<[usize; 3], f64>, String, i32);

/// Relative margin by which bf16 must beat fp8 to be chosen.
const NOISE: f64 = 0.01;

/// What was decided for one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeChoice {
    /// `[rows, in_features, out_features]`.
    pub shape: [usize; 3],
    /// The fp8 GEMM's time, µs.
    pub fp8_us: f64,
    /// The bf16 GEMM's time, µs.
    pub bf16_us: f64,
    /// Whether the shape stays bf16.
    pub keep_bf16: bool,
    /// Taken from the cache (not measured now).
    pub cached: bool,
}

/// The cache's shape field.
const CACHE_SHAPE: &str = "fp8-choice";

/// What one decision is about, hashed: the linear's shape and the fp8
/// build's mode (per tensor or per row, fast accumulation or not).
fn decision_hash(shape: [usize; 3], options: &PassOptions) -> String {
    let what = format!(
        "{shape:?} {:?} fast_accumulation={}",
        options.fp8, options.fp8_fast_accumulation
    );
    content_hash(what.as_bytes(), b"")
}

/// The cache key of one decision on a device and driver.
fn key(shape: [usize; 3], options: &PassOptions, device: &str, driver: &str) -> String {
    tuning_key(&decision_hash(shape, options), CACHE_SHAPE, device, driver)
}

/// The decision a cache record holds for `shape`.
fn recorded(shape: [usize; 3], r: &TuningRecord) -> ShapeChoice {
    ShapeChoice {
        shape,
        fp8_us: r.default_time_us,
        bf16_us: r
            .config
            .get("bf16_us_x1000")
            .map_or(f64::NAN, |v| *v as f64 / 1e3),
        keep_bf16: r.config.get("bf16") == Some(&1),
        cached: true,
    }
}

/// The shapes of the scaled linears of an fp8 build, each once, in order.
pub fn scaled_shapes(optimized: &Optimized) -> Result<Vec<[usize; 3]>, Error> {
    let graph = &optimized.graph;
    let mut out = Vec::new();
    for id in graph.topo_order()? {
        if let fluxc_ir::Op::ScaledLinear { .. } = graph.node(id).op {
            // operands: xq, xs, wq, ws, [bias]; the weight is [out, in].
            let ops = graph.operands(id);
            let x = graph.ty(ops[0]);
            let w = graph.ty(ops[2]).shape.dims().to_vec();
            let k = w.get(1).copied().unwrap_or(1).max(1);
            let shape = [x.shape.numel() / k, k, w.first().copied().unwrap_or(1)];
            if !out.contains(&shape) {
                out.push(shape);
            }
        }
    }
    Ok(out)
}

/// The GEMM step of `schedule` computing a linear of `shape` (column-major
/// cuBLASLt view: `m` = out features, `n` = rows, `k` = in features), fp8
/// or not.
fn gemm_of(schedule: &Schedule, shape: [usize; 3], fp8: bool) -> Option<&Gemm> {
    let [rows, k, out] = shape.map(|v| v as u64);
    schedule.steps.iter().find_map(|s| match s {
        Step::Gemm(g) if g.m == out && g.n == rows && g.k == k && g.scales.is_some() == fp8 => {
            Some(g)
        }
        _ => None,
    })
}

/// The decisions the cache holds for `shapes` on `device`/`driver`, and the
/// shapes it lacks.
pub fn cached_choices(
    shapes: &[[usize; 3]],
    options: &PassOptions,
    cache: &TuningCache,
    device: &str,
    driver: &str,
) -> (Vec<ShapeChoice>, Vec<[usize; 3]>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &shape in shapes {
        match cache.entries.get(&key(shape, options, device, driver)) {
            Some(r) => found.push(recorded(shape, r)),
            None => missing.push(shape),
        }
    }
    (found, missing)
}

/// The decisions a cache holds for `shapes`, without a GPU: the records of
/// the one device that measured them (several is an error naming them).
pub fn cached_without_gpu(
    shapes: &[[usize; 3]],
    options: &PassOptions,
    cache: &TuningCache,
) -> Result<Vec<ShapeChoice>, Error> {
    let records: Vec<(&str, ShapeChoice)> = shapes
        .iter()
        .flat_map(|&shape| {
            cache
                .records_for(&decision_hash(shape, options), CACHE_SHAPE)
                .map(move |(device, r)| (device, recorded(shape, r)))
        })
        .collect();
    crate::tune::single_device(records.iter().map(|(d, _)| *d), "the fp8 choices")?;
    Ok(records.into_iter().map(|(_, choice)| choice).collect())
}

/// Times the fp8 and the bf16 GEMM of every shape in `shapes` (fp8 GEMMs
/// from `fp8_schedule`, bf16 ones from `bf16_schedule`) and decides; the
/// decisions go into `cache`.
pub fn measure(
    shapes: &[[usize; 3]],
    options: &PassOptions,
    fp8_schedule: &Schedule,
    bf16_schedule: &Schedule,
    cache: &mut TuningCache,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<ShapeChoice>, Error> {
    let mut fp8_keys = BTreeMap::new();
    let mut bf16_keys = BTreeMap::new();
    for &shape in shapes {
        let (Some(f), Some(b)) = (
            gemm_of(fp8_schedule, shape, true),
            gemm_of(bf16_schedule, shape, false),
        ) else {
            continue;
        };
        fp8_keys.insert(gemm_key(fp8_schedule, f), shape);
        bf16_keys.insert(gemm_key(bf16_schedule, b), shape);
    }
    let time = |schedule: &Schedule, keys: &BTreeMap<String, [usize; 3]>| -> Result<Timed, Error> {
        let run = tune_gemms(
            schedule,
            &GemmTuneOptions {
                only: Some(keys.keys().cloned().collect()),
                deadline,
                search: None,
                ..GemmTuneOptions::default()
            },
            |_, _, _| {},
        )?;
        let times = run
            .gemms
            .iter()
            .filter_map(|g| Some((*keys.get(&g.key)?, g.best_us())))
            .collect();
        Ok((times, run.device, run.driver))
    };
    let (fp8_times, device, driver) = time(fp8_schedule, &fp8_keys)?;
    let (bf16_times, _, _) = time(bf16_schedule, &bf16_keys)?;
    let driver = driver.to_string();
    let mut out = Vec::new();
    for &shape in shapes {
        let (Some(&fp8_us), Some(&bf16_us)) = (fp8_times.get(&shape), bf16_times.get(&shape))
        else {
            continue;
        };
        if !(fp8_us.is_finite() && bf16_us.is_finite()) {
            continue;
        }
        let keep_bf16 = bf16_us < fp8_us * (1.0 - NOISE);
        cache.entries.insert(
            key(shape, options, &device, &driver),
            TuningRecord {
                name: format!("fp8 or bf16 for linears of {shape:?}"),
                config: BTreeMap::from([
                    ("bf16".to_string(), i64::from(keep_bf16)),
                    ("bf16_us_x1000".to_string(), (bf16_us * 1e3).round() as i64),
                ]),
                time_us: fp8_us.min(bf16_us),
                default_time_us: fp8_us,
                measurements: 2,
            },
        );
        out.push(ShapeChoice {
            shape,
            fp8_us,
            bf16_us,
            keep_bf16,
            cached: false,
        });
    }
    Ok(out)
}

/// A markdown table of the decisions.
pub fn report(choices: &[ShapeChoice]) -> String {
    let mut out = String::from(
        "| linear [rows, in, out] | fp8 µs | bf16 µs | kept in | from |\n\
         | --- | ---: | ---: | --- | --- |\n",
    );
    let us = us_cell;
    for c in choices {
        out.push_str(&format!(
            "| {:?} | {} | {} | {} | {} |\n",
            c.shape,
            us(c.fp8_us),
            us(c.bf16_us),
            if c.keep_bf16 { "bf16" } else { "fp8" },
            if c.cached { "cache" } else { "measured" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_through_the_cache() {
        let options = PassOptions::default();
        let mut cache = TuningCache::default();
        let shape = [512, 3072, 9216];
        cache.entries.insert(
            key(shape, &options, "NVIDIA H200", "13000"),
            TuningRecord {
                name: "x".into(),
                config: BTreeMap::from([
                    ("bf16".to_string(), 1),
                    ("bf16_us_x1000".to_string(), 30_500),
                ]),
                time_us: 30.5,
                default_time_us: 33.0,
                measurements: 2,
            },
        );
        let (found, missing) = cached_choices(
            &[shape, [4096, 3072, 9216]],
            &options,
            &cache,
            "NVIDIA H200",
            "13000",
        );
        assert_eq!(missing, vec![[4096, 3072, 9216]]);
        assert_eq!(found.len(), 1);
        assert!(found[0].keep_bf16 && found[0].cached);
        assert_eq!(found[0].bf16_us, 30.5);
        let without_gpu = cached_without_gpu(&[shape], &options, &cache).unwrap();
        assert_eq!(without_gpu, found);
        // Another fp8 mode is another decision.
        let row = PassOptions {
            fp8: fluxc_passes::Fp8Mode::DynamicRow,
            ..PassOptions::default()
        };
        assert!(
            cached_choices(&[shape], &row, &cache, "NVIDIA H200", "13000")
                .0
                .is_empty()
        );
        let table = report(&found);
        assert!(
            table.contains("| [512, 3072, 9216] | 33.0 | 30.5 | bf16 | cache |"),
            "{table}"
        );
    }
}
