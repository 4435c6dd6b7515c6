//! The tuning steps of `fluxc compile`: generated kernels before codegen,
//! GEMMs after it, either from the tuning cache alone or measured on the
//! GPU within the budget ([`GpuTuning`], `--tune`).
//!
//! On the GPU, whatever the cache holds for this device and driver is
//! taken without measuring; the rest is measured until the budget is spent,
//! and what is left then keeps its default (not cached). Each item prints a
//! progress line (done/total, seconds so far, an ETA capped by the budget);
//! the summary on stderr, and the report with `--report`, say how much the
//! budget left out.

use std::time::Instant;

use fluxc_artifact::{Schedule, TuningCache};
use fluxc_autotune::{Budget, SearchOptions};
use fluxc_codegen::CodegenOptions;
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::pipeline::{optimize, Optimized};
use fluxc_passes::{Fp8Mode, PassOptions};
use fluxc_runtime::attention_bench::AttentionBench;
use fluxc_runtime::gemm_tuning::{tune_gemms, GemmTuneOptions, GEMM_SEARCH_MEASUREMENTS};
use fluxc_runtime::kernel_bench::KernelBench;

use crate::attention_tuning::{self, AttentionChoices};
use crate::fp8_choice;
use crate::kernel_tuning::{self, us_cell, Choices, Outcome};
use crate::tune;
use crate::tune_settings::TuneSettings;

type Error = Box<dyn std::error::Error>;

/// Kernel launches from the cache, without a GPU (the records of the one
/// device the cache measured this model's kernels on).
pub fn cached_kernels(optimized: &Optimized, cache: &TuningCache) -> Result<Choices, Error> {
    let (chosen, found, total) = kernel_tuning::cached_kernels(optimized, cache)?;
    eprintln!(
        "  tuning: {found} of {total} kernel(s) found in the cache, {} with a non-default launch",
        chosen.len()
    );
    Ok(chosen)
}

/// Attention tiles from the cache, without a GPU.
pub fn cached_attention(
    optimized: &Optimized,
    cache: &TuningCache,
) -> Result<AttentionChoices, Error> {
    let (chosen, found, total) = attention_tuning::cached_attention(optimized, cache)?;
    if total > 0 {
        eprintln!(
            "  tuning: {found} of {total} attention problem(s) found in the cache, {} with \
             non-default tiles",
            chosen.len()
        );
    }
    Ok(chosen)
}

/// The linear shapes of an fp8 build that stay bf16: measured on the GPU
/// with `gpu` (what `cache` lacks for it, within the budget), else what
/// `cache` holds; said on stderr.
pub fn fp8_choices(
    cfg: &ModelConfig,
    options: &PassOptions,
    optimized: &Optimized,
    gpu: Option<&mut GpuTuning>,
    cache: &mut TuningCache,
) -> Result<Vec<[usize; 3]>, Error> {
    let shapes = fp8_choice::scaled_shapes(optimized)?;
    if shapes.is_empty() {
        return Ok(Vec::new());
    }
    let (choices, how) = match gpu {
        Some(gpu) => {
            let choices = gpu.fp8_choices(cfg, options, optimized, &shapes, cache)?;
            (choices, "measured or cached on this GPU")
        }
        None => (
            fp8_choice::cached_without_gpu(&shapes, options, cache)?,
            "from the cache",
        ),
    };
    let keep: Vec<[usize; 3]> = choices
        .iter()
        .filter(|c| c.keep_bf16)
        .map(|c| c.shape)
        .collect();
    eprintln!(
        "  fp8 or bf16: {} of {} fp8 linear shape(s) decided ({how}), {} kept in bf16{}",
        choices.len(),
        shapes.len(),
        keep.len(),
        if keep.is_empty() {
            String::new()
        } else {
            format!(": {keep:?}")
        }
    );
    Ok(keep)
}

/// GEMM algorithms from the cache, without a GPU.
pub fn cached_gemms(
    schedule: &mut Schedule,
    cache: &TuningCache,
    cache_name: &str,
) -> Result<(), Error> {
    let applied = tune::apply_cache(schedule, cache, None)
        .map_err(|e| format!("tuning cache `{cache_name}`: {e}"))?;
    eprintln!(
        "  tuning: {} of {} GEMM steps take tuned algorithms from `{cache_name}`{}",
        applied.tuned,
        applied.gemms,
        applied
            .device
            .map(|d| format!(" (measured on {d})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// Tuning on this machine's GPU (`--tune`), within a budget.
pub struct GpuTuning {
    bench: KernelBench,
    attention_bench: AttentionBench,
    driver: String,
    budget: Budget,
    budget_from: &'static str,
    search: SearchOptions,
    report: bool,
    /// Kernels left at their default by the budget.
    kernels_left: usize,
    /// Distinct GEMMs left unmeasured by the budget.
    gemms_left: usize,
}

impl GpuTuning {
    /// Opens the GPU and starts the budget; an error saying `--tune` needs a
    /// GPU without one.
    pub fn start(settings: &TuneSettings, report: bool) -> Result<GpuTuning, Error> {
        let include_dirs = fluxc_runtime::LoadOptions::default().cuda_include_dirs;
        let bench = KernelBench::new(0, fluxc_codegen::ARCH, &include_dirs)
            .map_err(|e| format!("--tune measures on the GPU: {e}"))?;
        let attention_bench = AttentionBench::new(0, fluxc_codegen::ARCH, &include_dirs)
            .map_err(|e| format!("--tune measures on the GPU: {e}"))?;
        let driver = fluxc_runtime::cuda::driver_version()?.to_string();
        Ok(GpuTuning {
            bench,
            attention_bench,
            driver,
            budget: settings.start_budget()?,
            budget_from: settings.budget_from,
            search: settings.search(),
            report,
            kernels_left: 0,
            gemms_left: 0,
        })
    }

    /// `NAME|DRIVER`, the device part of this GPU's cache keys.
    fn device(&self) -> String {
        format!("{}|{}", self.bench.device_name(), self.driver)
    }

    /// Tunes every generated kernel the cache lacks.
    pub fn kernels(
        &mut self,
        optimized: &Optimized,
        cache: &mut TuningCache,
    ) -> Result<Choices, Error> {
        let device = self.bench.device_name();
        let uncached = kernel_tuning::uncached_kernels(optimized, cache, &device, &self.driver)?;
        eprintln!(
            "  tuning the generated kernels on {device}: {} not in the cache",
            uncached.len()
        );
        let (started, budget) = (Instant::now(), &self.budget);
        let (chosen, rows) = kernel_tuning::tune_kernels(
            optimized,
            &self.bench,
            &self.driver,
            cache,
            &self.search,
            &self.budget,
            |d, t, r| {
                let how = r.outcome.progress(r.measured);
                let us = |t: f64| format!("{:>8} µs", us_cell(t));
                eprintln!(
                    "    [{}] {} → {}  {} (x{}, {how})",
                    progress_tag(d, t, started, budget),
                    us(r.default_us),
                    us(r.best_us),
                    r.ops,
                    r.launches
                )
            },
        )?;
        self.kernels_left = rows
            .iter()
            .filter(|r| r.outcome == Outcome::OutOfBudget)
            .count();
        let cached = rows.iter().filter(|r| r.outcome == Outcome::Cached).count();
        eprintln!(
            "  tuning: {cached} of {} kernel(s) from the cache, {} measured",
            rows.len(),
            rows.iter()
                .filter(|r| r.outcome == Outcome::Measured)
                .count()
        );
        if self.report {
            print!("{}", kernel_tuning::report(&rows));
        }
        Ok(chosen)
    }

    /// fp8 or bf16 for every linear shape of an fp8 build: the cache's
    /// decisions for this GPU, and the missing shapes measured (the fp8 and
    /// the bf16 GEMM of each, see `fp8_choice`) while the budget lasts.
    fn fp8_choices(
        &mut self,
        cfg: &ModelConfig,
        options: &PassOptions,
        optimized: &Optimized,
        shapes: &[[usize; 3]],
        cache: &mut TuningCache,
    ) -> Result<Vec<fp8_choice::ShapeChoice>, Error> {
        let device = self.bench.device_name();
        let (mut choices, missing) =
            fp8_choice::cached_choices(shapes, options, cache, &device, &self.driver);
        if !missing.is_empty() && !self.budget.exhausted() {
            let codegen = CodegenOptions {
                model_name: cfg.model.name.clone(),
                layouts: Vec::new(),
                reuse_memory: true,
            };
            let fp8 = fluxc_codegen::generate(optimized, &codegen)?;
            let bf16_options = PassOptions {
                fp8: Fp8Mode::Off,
                ..options.clone()
            };
            let bf16 =
                fluxc_codegen::generate(&optimize(build_graph(cfg)?, &bf16_options)?, &codegen)?;
            eprintln!(
                "  fp8 or bf16: timing the fp8 and bf16 GEMMs of {} linear shape(s)",
                missing.len()
            );
            choices.extend(fp8_choice::measure(
                &missing,
                options,
                &fp8.schedule,
                &bf16.schedule,
                cache,
                self.budget.deadline(),
            )?);
        }
        if self.report {
            println!("{}", fp8_choice::report(&choices));
        }
        Ok(choices)
    }

    /// Tunes the attention kernel's tiles for every problem the cache lacks.
    pub fn attention(
        &mut self,
        optimized: &Optimized,
        cache: &mut TuningCache,
    ) -> Result<AttentionChoices, Error> {
        let device = self.bench.device_name();
        let (started, budget) = (Instant::now(), &self.budget);
        let (chosen, rows) = attention_tuning::tune_attention(
            optimized,
            &self.attention_bench,
            &device,
            &self.driver,
            cache,
            &self.search,
            &self.budget,
            |d, t, r| {
                let how = r.outcome.progress(r.measured);
                eprintln!(
                    "    [attention {}] {} µs → {} µs  {:?}: {} keys per tile, {} stages \
                     (x{}, {how})",
                    progress_tag(d, t, started, budget),
                    us_cell(r.default_us),
                    us_cell(r.best_us),
                    r.dims,
                    r.config.block_n,
                    r.config.stages,
                    r.launches
                )
            },
        )?;
        self.kernels_left += rows
            .iter()
            .filter(|r| r.outcome == Outcome::OutOfBudget)
            .count();
        if self.report && !rows.is_empty() {
            print!("\n{}", attention_tuning::report(&rows));
        }
        Ok(chosen)
    }

    /// Gives every GEMM step the algorithm the cache holds for this GPU, and
    /// measures the GEMMs it lacks while the budget lasts.
    pub fn gemms(&mut self, schedule: &mut Schedule, cache: &mut TuningCache) -> Result<(), Error> {
        let device = self.device();
        let applied = tune::apply_cache(schedule, cache, Some(&device))?;
        let missing = tune::gemms_to_measure(schedule, cache, &device);
        let distinct = fluxc_runtime::gemm_tuning::distinct_gemms(schedule).len();
        eprintln!(
            "  tuning the GEMMs: {} of {distinct} distinct GEMM(s) from the cache ({} steps take \
             a tuned algorithm), {} to measure",
            distinct - missing.len(),
            applied.tuned,
            missing.len()
        );
        if missing.is_empty() {
            return Ok(());
        }
        if self.budget.exhausted() {
            self.gemms_left = missing.len();
            return Ok(());
        }
        // The heuristic's candidates, then a search of at most
        // GEMM_SEARCH_MEASUREMENTS configurations per GEMM (~20 distinct
        // GEMMs in a FLUX model), with the kernels' noise and directions.
        let options = GemmTuneOptions {
            only: Some(missing),
            deadline: self.budget.deadline(),
            search: Some(SearchOptions {
                max_measurements: GEMM_SEARCH_MEASUREMENTS,
                deadline: None,
                ..self.search.clone()
            }),
            ..GemmTuneOptions::default()
        };
        let (started, budget) = (Instant::now(), &self.budget);
        let run = tune_gemms(schedule, &options, |d, t, g| {
            eprintln!(
                "    [{}] {}",
                progress_tag(d, t, started, budget),
                tune::progress_line(g)
            )
        })?;
        self.gemms_left = run.out_of_time;
        tune::say_no_fast_accumulation(&run);
        let tuned = tune::apply_run(schedule, &run);
        tune::add_to_cache(cache, &run);
        eprintln!(
            "  tuning: {} GEMM(s) measured, {tuned} of their steps take tuned algorithms",
            run.gemms.len()
        );
        if self.report {
            print!("{}", tune::report(&run.gemms));
        }
        Ok(())
    }

    /// Says how long tuning took and what the budget left at the defaults,
    /// on stderr and (with `--report`) in the report.
    pub fn finish(&self) {
        let line = budget_line(
            self.budget.elapsed().as_secs_f64(),
            self.budget.limit().as_secs_f64(),
            self.budget_from,
            self.kernels_left,
            self.gemms_left,
        );
        eprintln!("  tuning: {line}");
        if self.report {
            println!("\n{line}");
        }
    }
}

/// `3/19, 12 s, ETA 40 s`: how far a tuning phase that started at
/// `started` is after `done` of `total` items; the estimate assumes the
/// items left take as long as those done, and never exceeds what is left
/// of the budget.
fn progress_tag(done: usize, total: usize, started: Instant, budget: &Budget) -> String {
    let elapsed = started.elapsed().as_secs_f64();
    let left = budget.limit().as_secs_f64() - budget.elapsed().as_secs_f64();
    format!(
        "{done}/{total}, {elapsed:.0} s, ETA {:.0} s",
        eta(elapsed, done, total, left)
    )
}

/// Seconds until `total` items are done after `done` took `elapsed`,
/// capped at `left` (the budget's rest, never below 0).
fn eta(elapsed: f64, done: usize, total: usize, left: f64) -> f64 {
    if done == 0 {
        return left.max(0.0);
    }
    let per_item = elapsed / done as f64;
    (per_item * total.saturating_sub(done) as f64).min(left.max(0.0))
}

/// `tuned in 76.2 s of the 120 s budget`, or what the budget left out.
fn budget_line(
    elapsed_s: f64,
    limit_s: f64,
    from: &str,
    kernels_left: usize,
    gemms_left: usize,
) -> String {
    if kernels_left == 0 && gemms_left == 0 {
        return format!("tuned in {elapsed_s:.1} s of the {limit_s} s budget ({from})");
    }
    format!(
        "the tuning budget of {limit_s} s ({from}) ran out after {elapsed_s:.1} s: \
         {kernels_left} kernel(s) and {gemms_left} distinct GEMM(s) keep their defaults and \
         are not cached (the next --tune measures them)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_extrapolates_and_stops_at_the_budget() {
        assert_eq!(eta(10.0, 5, 20, 100.0), 30.0);
        assert_eq!(eta(10.0, 5, 20, 12.0), 12.0);
        assert_eq!(eta(10.0, 20, 20, 100.0), 0.0);
        assert_eq!(eta(0.0, 0, 20, 50.0), 50.0);
        assert_eq!(eta(10.0, 5, 20, -3.0), 0.0);
    }

    #[test]
    fn the_budget_line_says_what_was_left_out() {
        assert_eq!(
            budget_line(76.24, 120.0, "[autotune] budget_s", 0, 0),
            "tuned in 76.2 s of the 120 s budget ([autotune] budget_s)"
        );
        let out = budget_line(30.5, 30.0, "--tune-budget", 3, 12);
        assert!(
            out.contains("budget of 30 s (--tune-budget) ran out after 30.5 s")
                && out.contains("3 kernel(s) and 12 distinct GEMM(s) keep their defaults"),
            "{out}"
        );
    }
}
