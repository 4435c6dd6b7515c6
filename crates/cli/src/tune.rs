//! `fluxc tune <artifact>`: times cuBLASLt's candidate algorithms for every
//! distinct GEMM of a compiled artifact on this machine's GPU and searches
//! their configurations from the fastest (`fluxc_runtime::gemm_tuning`;
//! `--search-measurements 0` times the heuristic's candidates only),
//! records the fastest in the artifact's schedule where it beats cuBLASLt's
//! default by more than the measurement noise (`Gemm::algo`, which the
//! runtime then checks and uses), and keeps the measurements in a tuning
//! cache. `--report` prints each GEMM's default, best heuristic, searched
//! and tuned time and what that makes per forward; `--dry-run` measures
//! without changing the artifact.
//!
//! The artifact stays consistent: the new `schedule.json` and the
//! `manifest.json` with its new content hash are written to temporary files
//! first and renamed into place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use fluxc_artifact::{content_hash, files, tuning_key, Schedule, Step, TuningCache, TuningRecord};
use fluxc_autotune::SearchOptions;
use fluxc_codegen::schedule_json;
use fluxc_runtime::bench::BenchTiming;
use fluxc_runtime::gemm_tuning::{
    chosen_algos, gemm_key, per_forward_us, tune_gemms, GemmTuneOptions, GemmTuneRun, GemmTuning,
};
use fluxc_runtime::Artifact;

/// A tuned algorithm must beat the default by this fraction to be recorded
/// (the batches' median varies by about 1% between runs).
pub const MIN_GAIN: f64 = 0.02;

/// What `fluxc tune` was asked to do.
pub struct TuneArgs<'a> {
    /// The artifact directory.
    pub artifact: &'a Path,
    /// Heuristic candidates per GEMM.
    pub candidates: usize,
    /// Configurations the search measures per GEMM at most (0: no search).
    pub search_measurements: usize,
    /// Let the search try several fields changed at once.
    pub check_all_directions: bool,
    /// The tuning cache to add the measurements to.
    pub cache: Option<&'a Path>,
    /// Print the per-GEMM report.
    pub report: bool,
    /// Measure only; leave the artifact as it is.
    pub dry_run: bool,
    /// Time each candidate after this many milliseconds of back-to-back
    /// launches ([`fluxc_runtime::bench::BenchTiming::sustain_ms`]).
    pub sustain_ms: u32,
}

/// Runs the tuning.
pub fn run(args: &TuneArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.sustain_ms > 0 && args.cache.is_some() {
        // A cache's entries are reused by later compiles as burst timings.
        return Err(
            "--sustain-ms measures at the power limit, which a tuning cache's \
                    other entries were not: give --cache or --sustain-ms, not both"
                .into(),
        );
    }
    let artifact = Artifact::load(args.artifact)?;
    if let Some(path) = args.cache {
        // Fail on an unreadable cache before the long measurement.
        fluxc_autotune::cache::load(path)?;
    }
    let defaults = GemmTuneOptions::default();
    let options = GemmTuneOptions {
        candidates: args.candidates,
        search: search_options(args.search_measurements, args.check_all_directions),
        timing: BenchTiming {
            sustain_ms: args.sustain_ms,
            ..defaults.timing
        },
        ..defaults
    };
    let started = std::time::Instant::now();
    let run = tune_gemms(&artifact.schedule, &options, |done, total, g| {
        eprintln!("  [{done}/{total}] {}", progress_line(g));
    })?;
    let (default_us, best_us) = per_forward_us(&run.gemms);
    let mut schedule = artifact.schedule.clone();
    let tuned = apply_run(&mut schedule, &run);
    eprintln!(
        "tuned {} distinct GEMMs on {} in {:.1} s: GEMM time per forward {:.2} ms → {:.2} ms; \
         {} of {} GEMM steps get a tuned algorithm",
        run.gemms.len(),
        run.device,
        started.elapsed().as_secs_f64(),
        default_us / 1e3,
        best_us / 1e3,
        tuned,
        run.gemms.iter().map(|g| g.steps.len()).sum::<usize>()
    );
    say_no_fast_accumulation(&run);
    if args.report {
        print!("{}", report(&run.gemms));
    }
    if let Some(path) = args.cache {
        let mut cache = fluxc_autotune::cache::load(path)?;
        add_to_cache(&mut cache, &run);
        fluxc_autotune::cache::save(path, &cache)?;
        eprintln!("wrote {} entries to {}", run.gemms.len(), path.display());
    }
    if !args.dry_run {
        rewrite(&artifact, &schedule)?;
        eprintln!("updated {}", artifact.dir.display());
    }
    Ok(())
}

/// The GEMM search's options: at most `measurements` per GEMM (0: no
/// search), the combined neighbourhood with `check_all_directions`.
pub fn search_options(measurements: usize, check_all_directions: bool) -> Option<SearchOptions> {
    (measurements > 0).then(|| SearchOptions {
        max_measurements: measurements,
        check_all_directions,
        ..SearchOptions::default()
    })
}

/// Says which GEMMs were not measured because cuBLASLt has no
/// fast-accumulation algorithm for them (the runtime runs them with
/// standard accumulation).
pub fn say_no_fast_accumulation(run: &GemmTuneRun) {
    if let Some(first) = run.no_fast_accumulation.first() {
        eprintln!(
            "  {} distinct GEMM(s) not measured: cuBLASLt has no fast-accumulation algorithm \
             for them, and the runtime accumulates them as usual (the first: `{first}`)",
            run.no_fast_accumulation.len()
        );
    }
}
/// `  13.9 µs → 13.2 µs (heuristic) → 12.8 µs (search)  NAME (xSTEPS)`.
pub fn progress_line(g: &GemmTuning) -> String {
    let searched = match (&g.search, &g.search_skipped) {
        (Some(s), _) => format!(
            " → {:>8.1} µs (search: {} measured, {} rejected{})",
            g.best_searched_us().unwrap_or(f64::NAN),
            s.measured,
            s.rejected_unlaunched + s.rejected_launched,
            if s.out_of_time { ", out of time" } else { "" }
        ),
        (None, Some(why)) => format!(" (no search: {why})"),
        (None, None) => String::new(),
    };
    format!(
        "{:>8.1} µs → {:>8.1} µs (heuristic){searched}  {} (x{})",
        g.default_us(),
        g.best_heuristic_us(),
        g.name,
        g.steps.len()
    )
}

/// Adds every GEMM of `run` to `cache`.
pub fn add_to_cache(cache: &mut TuningCache, run: &GemmTuneRun) {
    for g in &run.gemms {
        let key = tuning_key(
            &content_hash(g.key.as_bytes(), b""),
            &g.key,
            &run.device,
            &run.driver.to_string(),
        );
        cache.entries.insert(key, record(g));
    }
}

/// Gives the GEMM steps `run` measured the algorithm it found faster (or
/// cuBLASLt's heuristic choice where none was); steps it did not measure
/// keep what they have. Returns how many steps got a tuned algorithm.
pub fn apply_run(schedule: &mut Schedule, run: &GemmTuneRun) -> usize {
    let chosen = chosen_algos(&run.gemms, MIN_GAIN);
    for &i in run.gemms.iter().flat_map(|g| &g.steps) {
        if let Some(Step::Gemm(g)) = schedule.steps.get_mut(i) {
            g.algo = chosen.get(&i).copied();
        }
    }
    chosen.len()
}

/// The cache record of one GEMM: the chosen candidate and its algorithm's
/// words (cuBLASLt's opaque `cublasLtMatmulAlgo_t`, valid for the device and
/// driver in the key).
fn record(g: &GemmTuning) -> TuningRecord {
    let mut config = BTreeMap::new();
    config.insert("candidate".to_string(), g.best as i64);
    for (i, w) in g.best_algo().iter().enumerate() {
        config.insert(format!("algo_word_{i}"), *w as i64);
    }
    TuningRecord {
        name: g.name.clone(),
        config,
        time_us: g.best_us(),
        default_time_us: g.default_us(),
        measurements: g.candidates.len(),
    }
}

/// The algorithm a cache record chose, when it beat the default clearly.
fn recorded_algo(r: &TuningRecord) -> Option<[u64; 8]> {
    if r.time_us.is_nan() || r.time_us >= r.default_time_us * (1.0 - MIN_GAIN) {
        return None;
    }
    let mut words = [0u64; 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = *r.config.get(&format!("algo_word_{i}"))? as u64;
    }
    Some(words)
}

/// What [`apply_cache`] did.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// GEMM steps that got a tuned algorithm.
    pub tuned: usize,
    /// GEMM steps in all.
    pub gemms: usize,
    /// The device (and driver) the applied records were measured on.
    pub device: Option<String>,
}

/// The [`gemm_key`] of every step of `schedule` (`None` for steps that are
/// not GEMMs).
fn step_keys(schedule: &Schedule) -> Vec<Option<String>> {
    schedule
        .steps
        .iter()
        .map(|s| match s {
            Step::Gemm(g) => Some(gemm_key(schedule, g)),
            _ => None,
        })
        .collect()
}

/// The records `cache` holds for the GEMM of `key`, each with its
/// `device|driver`.
fn gemm_records<'c>(
    cache: &'c TuningCache,
    key: &str,
) -> impl Iterator<Item = (&'c str, &'c TuningRecord)> + 'c {
    cache.records_for(&content_hash(key.as_bytes(), b""), key)
}

/// Gives every GEMM step of `schedule` the algorithm `cache` recorded for
/// its GEMM, where the record beat cuBLASLt's default. Records are keyed by
/// device and driver too: `device` (`NAME|DRIVER`, known when tuning on a
/// GPU) takes that device's records only; without it (compiling needs no
/// GPU) the records of the one device the cache holds are used, and a cache
/// holding several is an error naming them.
pub fn apply_cache(
    schedule: &mut Schedule,
    cache: &TuningCache,
    device: Option<&str>,
) -> Result<Applied, String> {
    let keys = step_keys(schedule);
    let of_device = |d: &str| device.is_none_or(|want| d == want);
    let found = single_device(
        keys.iter().flatten().flat_map(|k| {
            gemm_records(cache, k)
                .map(|(d, _)| d)
                .filter(|d| of_device(d))
                .collect::<Vec<_>>()
        }),
        "this model's GEMMs",
    )?;
    let mut applied = Applied {
        tuned: 0,
        gemms: keys.iter().flatten().count(),
        device: found,
    };
    for (step, key) in schedule.steps.iter_mut().zip(&keys) {
        let (Step::Gemm(g), Some(key)) = (step, key) else {
            continue;
        };
        let algo = gemm_records(cache, key)
            .find(|(d, _)| of_device(d))
            .and_then(|(_, r)| recorded_algo(r));
        applied.tuned += usize::from(algo.is_some());
        g.algo = algo;
    }
    Ok(applied)
}

/// The distinct GEMMs of `schedule` (by [`gemm_key`]) that `cache` holds no
/// record of for `device` (`NAME|DRIVER`): what `compile --tune` measures.
pub fn gemms_to_measure(
    schedule: &Schedule,
    cache: &TuningCache,
    device: &str,
) -> BTreeSet<String> {
    step_keys(schedule)
        .into_iter()
        .flatten()
        .filter(|k| !gemm_records(cache, k).any(|(d, _)| d == device))
        .collect()
}

/// The one `device|driver` a compile without a GPU takes `what`'s records
/// from, in words (`NVIDIA H200 (driver 13000)`); `None` when there are no
/// records, an error naming them when they come from several.
pub fn single_device<'a>(
    devices: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> Result<Option<String>, String> {
    let mut found: Vec<String> = devices
        .into_iter()
        .map(|d| match d.rsplit_once('|') {
            Some((device, driver)) => format!("{device} (driver {driver})"),
            None => d.to_string(),
        })
        .collect();
    found.sort();
    found.dedup();
    if found.len() > 1 {
        return Err(format!(
            "the tuning cache holds measurements of {what} from several devices ({}); keep one \
             device's entries",
            found.join(", ")
        ));
    }
    Ok(found.pop())
}

/// One line per distinct GEMM: default, best heuristic, best searched and
/// tuned µs, speed-up, how many steps it is, heuristic candidates timed
/// (rejected), configurations the search measured (rejected before launch,
/// rejected after it).
pub fn report(gemms: &[GemmTuning]) -> String {
    let mut out = String::from(
        "| GEMM | steps | default µs | heuristic µs | searched µs | tuned µs | speed-up | \
         candidates (rejected) | searched (rejected before / after launch) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for g in gemms {
        let (heuristic, rejected) = g.heuristic_counts();
        let (searched_us, searched) = match &g.search {
            Some(s) => (
                format!("{:.1}", g.best_searched_us().unwrap_or(f64::NAN)),
                format!(
                    "{} ({} / {}){}",
                    s.measured,
                    s.rejected_unlaunched,
                    s.rejected_launched,
                    if s.out_of_time { ", out of time" } else { "" }
                ),
            ),
            None => ("—".to_string(), "—".to_string()),
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {searched_us} | {:.1} | {:.3}× | {heuristic} ({rejected}) | \
             {searched} |\n",
            g.key,
            g.steps.len(),
            g.default_us(),
            g.best_heuristic_us(),
            g.best_us(),
            g.default_us() / g.best_us(),
        ));
    }
    let (default_us, best_us) = per_forward_us(gemms);
    out.push_str(&format!(
        "\nper forward: {:.2} ms with cuBLASLt's default algorithms, {:.2} ms tuned\n",
        default_us / 1e3,
        best_us / 1e3
    ));
    out
}

/// Writes `schedule` as the artifact's and the manifest's new content hash.
fn rewrite(artifact: &Artifact, schedule: &Schedule) -> Result<(), Box<dyn std::error::Error>> {
    let schedule_text = schedule_json(schedule)?;
    let mut manifest = artifact.manifest.clone();
    manifest.content_hash = content_hash(schedule_text.as_bytes(), artifact.kernels.as_bytes());
    let manifest_text = serde_json::to_string_pretty(&manifest)? + "\n";
    let dir = &artifact.dir;
    let temp = |name: &str| -> PathBuf { dir.join(format!(".{name}.tune-{}", std::process::id())) };
    let (schedule_tmp, manifest_tmp) = (temp(files::SCHEDULE), temp(files::MANIFEST));
    let write = || -> std::io::Result<()> {
        fs::write(&schedule_tmp, &schedule_text)?;
        fs::write(&manifest_tmp, &manifest_text)?;
        fs::rename(&schedule_tmp, dir.join(files::SCHEDULE))?;
        fs::rename(&manifest_tmp, dir.join(files::MANIFEST))
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&schedule_tmp);
        let _ = fs::remove_file(&manifest_tmp);
        format!("cannot update artifact `{}`: {e}", dir.display()).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_runtime::gemm_search::SearchSummary;
    use fluxc_runtime::gemm_tuning::{Candidate, Origin};

    fn gemm(times: &[Option<f64>], best: usize) -> GemmTuning {
        GemmTuning {
            key: "bf16>bf16 TN m=8 n=4 k=16".into(),
            name: "%3 linear".into(),
            steps: vec![2, 9],
            candidates: times
                .iter()
                .enumerate()
                .map(|(i, &us)| Candidate {
                    algo: [i as u64 + 1; 8],
                    us,
                    difference: 0.0,
                    rejected: us.is_none().then(|| "no".to_string()),
                    origin: Origin::Heuristic,
                })
                .collect(),
            best,
            search: None,
            search_skipped: None,
        }
    }

    fn schedule() -> Schedule {
        use fluxc_artifact::{Buffer, ElemType, Gemm, GemmEpilogue, Region, Tensor};
        let buffer = |id: u32, shape: Vec<u64>| {
            Buffer::new(
                id,
                format!("b{id}"),
                ElemType::Bf16,
                shape,
                Region::Arena,
                0,
            )
        };
        let gemm = |m: u64, bias: bool| {
            Step::Gemm(Gemm {
                name: format!("linear {m}"),
                dtype: ElemType::Bf16,
                trans_a: true,
                trans_b: false,
                m,
                n: 4,
                k: 16,
                a: Tensor::of(1),
                lda: 16,
                b: Tensor::of(0),
                ldb: 16,
                d: Tensor::of(3),
                ldd: m,
                bias: bias.then(|| Tensor::of(2)),
                epilogue: if bias {
                    GemmEpilogue::Bias
                } else {
                    GemmEpilogue::Default
                },
                d_dtype: None,
                scales: None,
                fast_accumulation: false,
                algo: None,
                c: None,
            })
        };
        Schedule {
            arena_bytes: 1 << 16,
            weight_bytes: 0,
            scratch_bytes: 0,
            gemm_workspace_bytes: 0,
            buffers: vec![
                buffer(0, vec![4, 16]),
                buffer(1, vec![16, 16]),
                buffer(2, vec![16]),
                buffer(3, vec![4, 16]),
            ],
            inputs: vec![],
            outputs: vec![],
            steps: vec![gemm(16, true), gemm(16, true), gemm(8, false)],
        }
    }

    fn entry(cache: &mut TuningCache, g: &GemmTuning, device: &str) {
        let key = tuning_key(
            &content_hash(g.key.as_bytes(), b""),
            &g.key,
            device,
            "13000",
        );
        cache.entries.insert(key, record(g));
    }

    #[test]
    fn the_cache_gives_compiles_the_tuned_algorithms() {
        let mut s = schedule();
        let key = |i: usize| match &s.steps[i] {
            Step::Gemm(g) => gemm_key(&s, g),
            _ => unreachable!(),
        };
        let (fast, slight) = (
            GemmTuning {
                key: key(0),
                ..gemm(&[Some(10.0), Some(5.0)], 1)
            },
            GemmTuning {
                key: key(2),
                ..gemm(&[Some(10.0), Some(9.9)], 1)
            },
        );
        let mut cache = TuningCache::default();
        entry(&mut cache, &fast, "NVIDIA H200");
        entry(&mut cache, &slight, "NVIDIA H200");
        let applied = apply_cache(&mut s, &cache, None).unwrap();
        assert_eq!(
            applied,
            Applied {
                tuned: 2,
                gemms: 3,
                device: Some("NVIDIA H200 (driver 13000)".into())
            }
        );
        let algos: Vec<Option<[u64; 8]>> = s
            .steps
            .iter()
            .map(|st| match st {
                Step::Gemm(g) => g.algo,
                _ => None,
            })
            .collect();
        // Only the clear gain is taken; the 1% one stays with the heuristic.
        assert_eq!(algos, vec![Some([2; 8]), Some([2; 8]), None]);

        entry(&mut cache, &fast, "NVIDIA H100");
        let err = apply_cache(&mut s, &cache, None).unwrap_err();
        assert!(err.contains("H100") && err.contains("H200"), "{err}");
        // On a GPU the device is known: its records apply, the others' not.
        let h100 = apply_cache(&mut s, &cache, Some("NVIDIA H100|13000")).unwrap();
        assert_eq!(
            (h100.tuned, h100.device.as_deref()),
            (2, Some("NVIDIA H100 (driver 13000)"))
        );
        assert_eq!(gemm_algo(&s, 2), None, "the H100 has no record of step 2");
    }

    fn gemm_algo(s: &Schedule, i: usize) -> Option<[u64; 8]> {
        match &s.steps[i] {
            Step::Gemm(g) => g.algo,
            _ => None,
        }
    }

    #[test]
    fn a_warm_cache_leaves_no_gemm_to_measure_and_runs_touch_only_their_steps() {
        let mut s = schedule();
        let key = |s: &Schedule, i: usize| match &s.steps[i] {
            Step::Gemm(g) => gemm_key(s, g),
            _ => unreachable!(),
        };
        let (k0, k2) = (key(&s, 0), key(&s, 2));
        let mut cache = TuningCache::default();
        let h200 = "NVIDIA H200|13000";
        let all: BTreeSet<String> = [k0.clone(), k2.clone()].into();
        assert_eq!(gemms_to_measure(&s, &cache, h200), all);
        entry(
            &mut cache,
            &GemmTuning {
                key: k0.clone(),
                ..gemm(&[Some(10.0), Some(5.0)], 1)
            },
            "NVIDIA H200",
        );
        assert_eq!(gemms_to_measure(&s, &cache, h200), [k2.clone()].into());
        entry(
            &mut cache,
            &GemmTuning {
                key: k2.clone(),
                ..gemm(&[Some(10.0), Some(5.0)], 1)
            },
            "NVIDIA H200",
        );
        assert!(
            gemms_to_measure(&s, &cache, h200).is_empty(),
            "a warm cache measures nothing"
        );
        assert_eq!(
            gemms_to_measure(&s, &cache, "NVIDIA B200|13000"),
            all,
            "records of another device do not count"
        );

        // A run of step 2 alone leaves steps 0 and 1 as the cache set them.
        apply_cache(&mut s, &cache, Some(h200)).unwrap();
        let run = GemmTuneRun {
            device: "NVIDIA H200".into(),
            driver: 13000,
            gemms: vec![GemmTuning {
                key: k2,
                steps: vec![2],
                ..gemm(&[Some(10.0), Some(9.0), Some(4.0)], 2)
            }],
            out_of_time: 0,
            no_fast_accumulation: vec![],
        };
        assert_eq!(apply_run(&mut s, &run), 1);
        assert_eq!(gemm_algo(&s, 0), Some([2; 8]));
        assert_eq!(gemm_algo(&s, 1), Some([2; 8]));
        assert_eq!(gemm_algo(&s, 2), Some([3; 8]));
    }

    #[test]
    fn records_keep_the_chosen_algorithm() {
        let r = record(&gemm(&[Some(10.0), Some(7.5)], 1));
        assert_eq!(r.config["candidate"], 1);
        assert_eq!(r.config["algo_word_0"], 2);
        assert_eq!(
            (r.time_us, r.default_time_us, r.measurements),
            (7.5, 10.0, 2)
        );
    }

    #[test]
    fn the_report_weighs_gemms_by_their_steps() {
        let text = report(&[gemm(&[Some(10.0), None, Some(5.0)], 2)]);
        assert!(
            text.contains("| 2 | 10.0 | 5.0 | — | 5.0 | 2.000× | 3 (1) | — |"),
            "{text}"
        );
        assert!(
            text.contains("per forward: 0.02 ms with cuBLASLt's default algorithms, 0.01 ms tuned"),
            "{text}"
        );
    }

    #[test]
    fn the_report_has_a_column_for_the_search() {
        let mut g = gemm(&[Some(10.0), Some(8.0), Some(6.0), None], 2);
        g.candidates[2].origin = Origin::Search;
        g.candidates[3].origin = Origin::Search;
        g.search = Some(SearchSummary {
            space: "algo_id in [1]".into(),
            start: Default::default(),
            best: Default::default(),
            start_us: 8.0,
            best_us: 6.0,
            measured: 3,
            rejected_unlaunched: 7,
            rejected_launched: 1,
            out_of_time: false,
        });
        let text = report(std::slice::from_ref(&g));
        assert!(
            text.contains("| 2 | 10.0 | 8.0 | 6.0 | 6.0 | 1.667× | 2 (0) | 3 (7 / 1) |"),
            "{text}"
        );
        let line = progress_line(&g);
        assert!(
            line.contains(
                "10.0 µs →      8.0 µs (heuristic) →      6.0 µs (search: 3 measured, 8 rejected)"
            ),
            "{line}"
        );
        g.search = None;
        g.search_skipped = Some("no algorithm ids".into());
        assert!(progress_line(&g).contains("(no search: no algorithm ids)"));
        assert_eq!(search_options(0, true), None);
        let o = search_options(24, true).unwrap();
        assert_eq!((o.max_measurements, o.check_all_directions), (24, true));
    }
}
