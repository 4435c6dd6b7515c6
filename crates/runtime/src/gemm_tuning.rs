//! GEMM algorithm tuning on the GPU.
//!
//! An artifact's GEMM steps record no algorithm until tuned, so the engine
//! takes cuBLASLt's first heuristic choice at load time, which is not always
//! the fastest for FLUX's shapes. [`tune_gemms`] times the alternatives:
//! for every distinct GEMM of a schedule (steps with the same types, shape,
//! layouts, epilogue and scales share one measurement) cuBLASLt's heuristic
//! proposes up to `candidates` algorithms; each is run on random operands,
//! its output checked against the first candidate's (relative L2 within
//! `tolerance`: algorithms differ only in summation order), and timed.
//! Then, with `search` set, a coordinate descent over cuBLASLt's algorithm
//! configurations ([`crate::gemm_space`]: algorithm id, tile, stages,
//! split-K, CTA swizzling, cluster shape) starts from the fastest of those
//! candidates ([`crate::gemm_search`]): configurations that cuBLASLt's
//! capabilities, `cublasLtMatmulAlgoCheck` or the workspace rule out are
//! rejected before launch; the others are checked against the first
//! candidate's output like the heuristic's and timed, at most
//! `search.max_measurements` per GEMM (24 by default: ~20 distinct GEMMs in
//! a FLUX model, within the tuning budget).
//! The caller records the winner in the schedule (`Gemm::algo`), which the
//! engine then checks and uses. `only` restricts the run to some GEMMs (the
//! ones a tuning cache lacks) and `deadline` stops it before the next GEMM
//! once a tuning budget is spent; each GEMM's search gets an equal share of
//! the time left before the deadline, so one slow GEMM does not leave the
//! others unmeasured.
//!
//! Timing: every candidate runs `warmup` times, then `batches` batches of
//! `per_batch` back-to-back launches between two CUDA events; its time is
//! the median batch divided by `per_batch`. Operands come in several copies
//! that successive launches rotate through, so no launch finds the previous
//! one's operands in L2 (an advantage the real forward does not give).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cudarc::driver::result as drv;
use fluxc_artifact::{ElemType, Gemm, GemmEpilogue, ScaleMode, Schedule, Step};
use fluxc_autotune::{Measurement, SearchOptions};

use crate::bench::{copies, pseudo_random, rel_l2, BenchContext, BenchTiming};
use crate::blas::{heuristic_algos, matmul_types, BlasHandle, GemmAddrs, GemmPlan};
use crate::convert::decode;
use crate::cuda::DeviceBuffer;
use crate::gemm_algo::{self, LtCapabilities};
use crate::gemm_search::{search_space, SearchSummary};
use crate::gemm_space::GemmSpace;
use crate::RuntimeError;

/// Configurations a GEMM's search measures at most, by default.
pub const GEMM_SEARCH_MEASUREMENTS: usize = 24;

/// How [`tune_gemms`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmTuneOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Heuristic candidates per GEMM (at most 64).
    pub candidates: usize,
    /// How each candidate is timed.
    pub timing: BenchTiming,
    /// Largest relative L2 difference from the first candidate's output.
    pub tolerance: f64,
    /// Measure only the GEMMs with these [`gemm_key`]s (`None`: all).
    pub only: Option<BTreeSet<String>>,
    /// Start no GEMM after this instant (`None`: no time limit).
    pub deadline: Option<Instant>,
    /// Search cuBLASLt's algorithm configurations from the best heuristic
    /// candidate with these options (`None`: the heuristic's candidates
    /// only). Its deadline is further limited to each GEMM's share of the
    /// time left before `deadline`.
    pub search: Option<SearchOptions>,
}

impl Default for GemmTuneOptions {
    fn default() -> Self {
        GemmTuneOptions {
            device: 0,
            candidates: 8,
            timing: BenchTiming {
                warmup: 3,
                batches: 5,
                per_batch: 10,
                sustain_ms: 0,
            },
            tolerance: 1e-2,
            only: None,
            deadline: None,
            search: Some(SearchOptions {
                max_measurements: GEMM_SEARCH_MEASUREMENTS,
                ..SearchOptions::default()
            }),
        }
    }
}

/// Where a candidate algorithm came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// cuBLASLt's heuristic.
    Heuristic,
    /// The search over algorithm configurations.
    Search,
}

/// One candidate algorithm of a GEMM.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The algorithm, as [`Gemm::algo`] records it.
    pub algo: [u64; 8],
    /// Its time per launch, µs; `None` when it was rejected.
    pub us: Option<f64>,
    /// Relative L2 difference of its output from the first candidate's.
    pub difference: f64,
    /// Why it was rejected.
    pub rejected: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

/// The measurements of one distinct GEMM.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmTuning {
    /// What makes two GEMM steps the same measurement ([`gemm_key`]).
    pub key: String,
    /// The first step's name, for reports.
    pub name: String,
    /// Indices of the schedule's steps this GEMM is.
    pub steps: Vec<usize>,
    /// Every candidate, in the heuristic's order (index 0 is the default).
    pub candidates: Vec<Candidate>,
    /// Index of the fastest valid candidate.
    pub best: usize,
    /// What the configuration search did (`None`: it did not run).
    pub search: Option<SearchSummary>,
    /// Why the configuration search did not run, when it was asked to.
    pub search_skipped: Option<String>,
}

impl GemmTuning {
    /// The default (first heuristic) algorithm's time, µs.
    pub fn default_us(&self) -> f64 {
        self.candidates[0].us.unwrap_or(f64::NAN)
    }

    /// The best algorithm's time, µs.
    pub fn best_us(&self) -> f64 {
        self.candidates[self.best].us.unwrap_or(f64::NAN)
    }

    /// The best algorithm.
    pub fn best_algo(&self) -> [u64; 8] {
        self.candidates[self.best].algo
    }

    /// The fastest of `origin`'s timed candidates, µs (`None`: none).
    fn fastest(&self, origin: Origin) -> Option<f64> {
        self.candidates
            .iter()
            .filter(|c| c.origin == origin)
            .filter_map(|c| c.us)
            .reduce(f64::min)
    }

    /// The fastest heuristic candidate's time, µs.
    pub fn best_heuristic_us(&self) -> f64 {
        self.fastest(Origin::Heuristic).unwrap_or(f64::NAN)
    }

    /// The fastest configuration the search found, µs: its starting point
    /// (the best heuristic candidate) where it found nothing faster; `None`
    /// when no search ran.
    pub fn best_searched_us(&self) -> Option<f64> {
        let start = self.search.as_ref()?.start_us;
        Some(self.fastest(Origin::Search).map_or(start, |s| s.min(start)))
    }

    /// Heuristic candidates (timed or rejected) and how many were rejected.
    pub fn heuristic_counts(&self) -> (usize, usize) {
        let of = |c: &&Candidate| c.origin == Origin::Heuristic;
        let all = self.candidates.iter().filter(of).count();
        let rejected = self
            .candidates
            .iter()
            .filter(of)
            .filter(|c| c.us.is_none())
            .count();
        (all, rejected)
    }
}

/// The identity of a GEMM measurement: element types, shape, leading
/// dimensions, epilogue, bias type, scale mode and accumulation.
pub fn gemm_key(schedule: &Schedule, g: &Gemm) -> String {
    let ty = |t: ElemType| format!("{t:?}").to_lowercase();
    let bias = g
        .bias
        .map(|t| ty(schedule.buffers[t.buffer as usize].dtype))
        .unwrap_or_else(|| "none".into());
    let epilogue = match g.epilogue {
        GemmEpilogue::Default => "none",
        GemmEpilogue::Bias => "bias",
        GemmEpilogue::GeluBias => "gelu_bias",
    };
    let scales = match g.scales.map(|s| s.mode) {
        None => "none",
        Some(ScaleMode::Tensor) => "tensor",
        Some(ScaleMode::OuterVector) => "outer_vector",
    };
    format!(
        "{}>{} {}{} m={} n={} k={} lda={} ldb={} ldd={} epilogue={epilogue} bias={bias} \
         scales={scales} fast_accumulation={}",
        ty(g.dtype),
        ty(g.d_type()),
        if g.trans_a { "T" } else { "N" },
        if g.trans_b { "T" } else { "N" },
        g.m,
        g.n,
        g.k,
        g.lda,
        g.ldb,
        g.ldd,
        g.fast_accumulation
    )
}

/// The schedule's GEMM steps grouped by [`gemm_key`], in order of first use.
pub fn distinct_gemms(schedule: &Schedule) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, step) in schedule.steps.iter().enumerate() {
        let Step::Gemm(g) = step else { continue };
        let key = gemm_key(schedule, g);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, steps)) => steps.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
}

/// Bytes of a column-major `rows × cols` matrix with leading dimension `ld`.
fn matrix_bytes(rows: u64, cols: u64, ld: u64, dtype: ElemType) -> u64 {
    ((cols - 1) * ld + rows) * dtype.size_bytes()
}

/// Device copies of one GEMM's operands.
struct Operands {
    a: DeviceBuffer,
    b: DeviceBuffer,
    d: DeviceBuffer,
    c: Option<DeviceBuffer>,
    bias: Option<(DeviceBuffer, ElemType)>,
    scales: Option<(DeviceBuffer, DeviceBuffer)>,
}

impl Operands {
    fn addrs(&self) -> GemmAddrs {
        GemmAddrs {
            a: self.a.ptr(),
            b: self.b.ptr(),
            d: self.d.ptr(),
            c: self.c.as_ref().map(DeviceBuffer::ptr),
            bias: self.bias.as_ref().map(|(b, t)| (b.ptr(), *t)),
            scales: self.scales.as_ref().map(|(a, b)| (a.ptr(), b.ptr())),
        }
    }
}

/// The GPU context, cuBLASLt handle and workspace a tuning run uses.
struct Bench {
    gpu: BenchContext,
    blas: BlasHandle,
    workspace: DeviceBuffer,
    workspace_bytes: usize,
}

impl Bench {
    fn new(device: usize, workspace_bytes: u64) -> Result<Bench, RuntimeError> {
        let gpu = BenchContext::new(device, true)?;
        let blas = BlasHandle::new()?;
        let workspace = DeviceBuffer::zeroed(
            &gpu.ctx,
            gpu.stream.cu_stream(),
            workspace_bytes,
            "the GEMM workspace",
        )?;
        let workspace_bytes = usize::try_from(workspace_bytes).map_err(|_| {
            RuntimeError::Device("the GEMM workspace does not fit this host".into())
        })?;
        Ok(Bench {
            gpu,
            blas,
            workspace,
            workspace_bytes,
        })
    }

    fn upload(
        &self,
        dtype: ElemType,
        values: &[f32],
        what: &str,
    ) -> Result<DeviceBuffer, RuntimeError> {
        self.gpu.upload(dtype, values, what)
    }

    /// One copy of `g`'s operands with values of seed `seed`.
    fn operands(&self, schedule: &Schedule, g: &Gemm, seed: u64) -> Result<Operands, RuntimeError> {
        let (a_rows, a_cols) = g.a_dims();
        let (b_rows, b_cols) = g.b_dims();
        let d_type = g.d_type();
        let count = |bytes: u64, t: ElemType| (bytes / t.size_bytes()) as usize;
        // Values of unit size; fp8 operands take them as they are (e4m3 holds
        // [-1, 1) finely enough), bf16 ones too.
        let a_n = count(matrix_bytes(a_rows, a_cols, g.lda, g.dtype), g.dtype);
        let b_n = count(matrix_bytes(b_rows, b_cols, g.ldb, g.dtype), g.dtype);
        let a = self.upload(g.dtype, &pseudo_random(a_n, seed), "operand A")?;
        let b = self.upload(g.dtype, &pseudo_random(b_n, seed + 1), "operand B")?;
        let d_bytes = matrix_bytes(g.m, g.n, g.ldd, d_type);
        let d = DeviceBuffer::zeroed(
            &self.gpu.ctx,
            self.gpu.stream.cu_stream(),
            d_bytes,
            "operand D",
        )?;
        // A residual C as large as D: its read is part of the GEMM's time.
        let c = match g.c {
            Some(_) => {
                let values = pseudo_random(count(d_bytes, d_type), seed + 5);
                Some(self.upload(d_type, &values, "operand C")?)
            }
            None => None,
        };
        let bias = match g.bias {
            Some(t) => {
                let dtype = schedule.buffers[t.buffer as usize].dtype;
                let values = pseudo_random(g.m as usize, seed + 2);
                Some((self.upload(dtype, &values, "the bias")?, dtype))
            }
            None => None,
        };
        let scales = match g.scales.map(|s| s.mode) {
            Some(mode) => {
                let (a_len, b_len) = match mode {
                    ScaleMode::Tensor => (1, 1),
                    ScaleMode::OuterVector => (g.m as usize, g.n as usize),
                };
                // Scales near 1/√k keep the output near unit size.
                let around = |n: usize, s: u64| -> Vec<f32> {
                    let unit = 1.0 / (g.k as f32).sqrt();
                    pseudo_random(n, s)
                        .iter()
                        .map(|v| unit * (1.0 + 0.25 * v))
                        .collect()
                };
                Some((
                    self.upload(ElemType::F32, &around(a_len, seed + 3), "A's scales")?,
                    self.upload(ElemType::F32, &around(b_len, seed + 4), "B's scales")?,
                ))
            }
            None => None,
        };
        Ok(Operands {
            a,
            b,
            d,
            c,
            bias,
            scales,
        })
    }

    /// Runs `plan` once and returns D as f32.
    fn output(
        &self,
        plan: &GemmPlan,
        operands: &Operands,
        g: &Gemm,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.enqueue(plan)?;
        let mut host = vec![0u8; operands.d.bytes()];
        // SAFETY: `host` holds the buffer's bytes and lives until the sync.
        unsafe { drv::memcpy_dtoh_async(&mut host, operands.d.ptr(), self.gpu.stream.cu_stream()) }
            .map_err(RuntimeError::driver("reading a GEMM's output"))?;
        self.gpu.sync("running a GEMM candidate")?;
        Ok(decode(g.d_type(), &host))
    }

    fn enqueue(&self, plan: &GemmPlan) -> Result<(), RuntimeError> {
        // SAFETY: the plan's addresses are live operand buffers of the sizes
        // its layouts describe; the workspace holds `workspace_bytes`.
        unsafe {
            plan.enqueue(
                &self.blas,
                self.workspace.ptr(),
                self.workspace_bytes,
                self.gpu.stream.cu_stream(),
            )
        }
        .map_err(RuntimeError::cublas("running a GEMM candidate"))
    }

    /// Median µs per launch of `plans` (rotated) over timed batches.
    fn time(&self, plans: &[GemmPlan], options: &GemmTuneOptions) -> Result<f64, RuntimeError> {
        self.gpu
            .time(options.timing, |i| self.enqueue(&plans[i % plans.len()]))
    }
}

/// One GEMM on the bench: its operands in several copies and the output
/// every candidate is checked against.
struct Trial<'a> {
    bench: &'a Bench,
    g: &'a Gemm,
    operands: Vec<Operands>,
    options: &'a GemmTuneOptions,
}

/// What running one candidate gave.
enum Outcome {
    /// Its output and time per launch, µs.
    Timed(Vec<f32>, f64),
    /// Its output differs from the reference by this much.
    Differs(f64),
}

impl Trial<'_> {
    /// The plans of algorithm `algo`, one per operand copy; each validates
    /// it with `cublasLtMatmulAlgoCheck` and the workspace limit, so an
    /// error here means it was never launched.
    fn plans(&self, algo: [u64; 8]) -> Result<Vec<GemmPlan>, String> {
        let with_algo = Gemm {
            algo: Some(algo),
            ..self.g.clone()
        };
        self.operands
            .iter()
            .map(|o| {
                GemmPlan::new(
                    &self.bench.blas,
                    &with_algo,
                    o.addrs(),
                    self.bench.workspace_bytes,
                )
            })
            .collect()
    }

    /// Runs `plans` once, compares the output with `reference` (none: this
    /// is the reference) and times them when within the tolerance.
    fn run(
        &self,
        plans: &[GemmPlan],
        reference: Option<&[f32]>,
    ) -> Result<(Outcome, f64), RuntimeError> {
        let out = self.bench.output(&plans[0], &self.operands[0], self.g)?;
        let difference = reference.map_or(0.0, |r| rel_l2(&out, r));
        if difference.is_nan() || difference > self.options.tolerance {
            return Ok((Outcome::Differs(difference), difference));
        }
        let us = self.bench.time(plans, self.options)?;
        Ok((Outcome::Timed(out, us), difference))
    }
}

/// The candidate of `algo` from what running it gave.
fn candidate(algo: [u64; 8], origin: Origin, outcome: &Outcome, difference: f64) -> Candidate {
    match outcome {
        Outcome::Timed(_, us) => Candidate {
            algo,
            us: Some(*us),
            difference,
            rejected: None,
            origin,
        },
        Outcome::Differs(d) => Candidate {
            algo,
            us: None,
            difference,
            rejected: Some(format!(
                "its output differs from the default algorithm's by {d:.2e}"
            )),
            origin,
        },
    }
}

/// Times the heuristic's candidates; returns them and the default's output.
fn heuristic_candidates(
    trial: &Trial,
    algos: Vec<[u64; 8]>,
) -> Result<(Vec<Candidate>, Option<Vec<f32>>), RuntimeError> {
    let mut candidates: Vec<Candidate> = Vec::with_capacity(algos.len());
    let mut reference: Option<Vec<f32>> = None;
    for algo in algos {
        let plans = match trial.plans(algo) {
            Ok(plans) => plans,
            Err(why) => {
                candidates.push(Candidate {
                    algo,
                    us: None,
                    difference: f64::NAN,
                    rejected: Some(why),
                    origin: Origin::Heuristic,
                });
                continue;
            }
        };
        let (outcome, difference) = trial.run(&plans, reference.as_deref())?;
        candidates.push(candidate(algo, Origin::Heuristic, &outcome, difference));
        if let (None, Outcome::Timed(out, _)) = (&reference, outcome) {
            reference = Some(out);
        }
    }
    Ok((candidates, reference))
}

/// Searches the configurations around candidate `start` (see the module
/// docs), appending every configuration that ran to `candidates`. `Ok(Err)`
/// says why the search could not start.
fn search_candidates(
    trial: &Trial,
    search: &SearchOptions,
    reference: &[f32],
    candidates: &mut Vec<Candidate>,
    start: usize,
) -> Result<Result<SearchSummary, String>, RuntimeError> {
    let Some((start_algo, start_us)) = candidates
        .get(start)
        .and_then(|c| c.us.map(|us| (c.algo, us)))
    else {
        return Ok(Err("no heuristic candidate was timed".into()));
    };
    let blas = &trial.bench.blas;
    let prepared = (|| -> Result<_, String> {
        let types = matmul_types(trial.g)?;
        let start = gemm_algo::read_config(start_algo)?;
        let space = GemmSpace::new(&LtCapabilities::new(blas, types), &start)?;
        Ok((types, space))
    })();
    let (types, space) = match prepared {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let mut found: Vec<Candidate> = Vec::new();
    let mut failure: Option<RuntimeError> = None;
    let summary = search_space(
        &space,
        search,
        start_us,
        |a| {
            let algo = gemm_algo::build(blas, types, a)?;
            trial.plans(algo).map(|plans| (algo, plans))
        },
        |_, (algo, plans)| {
            if failure.is_some() {
                return Measurement::Rejected("an earlier launch failed".into());
            }
            match trial.run(&plans, Some(reference)) {
                Ok((outcome, difference)) => {
                    let c = candidate(algo, Origin::Search, &outcome, difference);
                    let m = match (&c.us, &c.rejected) {
                        (Some(us), _) => Measurement::Time(*us),
                        (None, why) => Measurement::Rejected(why.clone().unwrap_or_default()),
                    };
                    found.push(c);
                    m
                }
                // cuBLASLt turning a configuration down at launch (its
                // check passed) rejects it; a failing GPU ends the run.
                Err(e @ RuntimeError::Cublas { .. }) => {
                    let why = format!("cuBLASLt would not run it: {e}");
                    found.push(Candidate {
                        algo,
                        us: None,
                        difference: f64::NAN,
                        rejected: Some(why.clone()),
                        origin: Origin::Search,
                    });
                    Measurement::Rejected(why)
                }
                Err(e) => {
                    failure = Some(e);
                    Measurement::Rejected("the launch failed".into())
                }
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    candidates.extend(found);
    Ok(summary.map_err(|e| e.to_string()))
}

/// The deadline of one GEMM's search: an equal share, among the `left`
/// GEMMs still to measure (this one included), of the time from `now` to
/// `deadline`, and never after `own` (the search options' deadline).
pub fn search_deadline(
    now: Instant,
    deadline: Option<Instant>,
    left: usize,
    own: Option<Instant>,
) -> Option<Instant> {
    let parts = u32::try_from(left.max(1)).unwrap_or(u32::MAX);
    let share = deadline.map(|d| now + d.saturating_duration_since(now) / parts);
    match (share, own) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A tuning run: where it ran and what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmTuneRun {
    /// The GPU's name.
    pub device: String,
    /// The CUDA driver version (`cuDriverGetVersion`).
    pub driver: i32,
    /// One entry per distinct GEMM measured, in order of first use.
    pub gemms: Vec<GemmTuning>,
    /// Distinct GEMMs left unmeasured because the deadline passed.
    pub out_of_time: usize,
    /// Distinct GEMMs (by name) left unmeasured because they ask for fast
    /// fp8 accumulation and cuBLASLt has no algorithm with it: the runtime
    /// runs them with standard accumulation and its heuristic's algorithm.
    pub no_fast_accumulation: Vec<String>,
}

/// Times cuBLASLt's candidate algorithms for every distinct GEMM of
/// `schedule` on the GPU and searches their configurations (see the module
/// docs; `options.only` and `options.deadline` limit which), calling
/// `progress(done, total, result)` after each. Fails like the engine does
/// without CUDA or a device ([`RuntimeError::NoCuda`],
/// [`RuntimeError::Device`]).
pub fn tune_gemms(
    schedule: &Schedule,
    options: &GemmTuneOptions,
    mut progress: impl FnMut(usize, usize, &GemmTuning),
) -> Result<GemmTuneRun, RuntimeError> {
    let mut groups = distinct_gemms(schedule);
    if let Some(only) = &options.only {
        groups.retain(|(key, _)| only.contains(key));
    }
    let bench = Bench::new(options.device, schedule.gemm_workspace_bytes)?;
    let device = bench.gpu.device_name();
    let driver = crate::cuda::driver_version()?;
    let mut results = Vec::with_capacity(groups.len());
    let mut no_fast_accumulation = Vec::new();
    for (done, (key, steps)) in groups.iter().enumerate() {
        let now = Instant::now();
        if options.deadline.is_some_and(|d| now >= d) {
            return Ok(GemmTuneRun {
                device,
                driver,
                gemms: results,
                out_of_time: groups.len() - done,
                no_fast_accumulation,
            });
        }
        let search = options.search.as_ref().map(|s| SearchOptions {
            deadline: search_deadline(now, options.deadline, groups.len() - done, s.deadline),
            ..s.clone()
        });
        let Step::Gemm(template) = &schedule.steps[steps[0]] else {
            unreachable!("distinct_gemms groups GEMM steps")
        };
        let g = Gemm {
            algo: None,
            ..template.clone()
        };
        match tune_one(&bench, schedule, &g, key, steps, options, search.as_ref())? {
            Some(result) => {
                progress(done + 1, groups.len(), &result);
                results.push(result);
            }
            None => no_fast_accumulation.push(g.name.clone()),
        }
    }
    Ok(GemmTuneRun {
        device,
        driver,
        gemms: results,
        out_of_time: 0,
        no_fast_accumulation,
    })
}

/// Measures one distinct GEMM `g` (the steps `steps`): the heuristic's
/// candidates, then the search with `search`. `None` when `g` asks for
/// fast accumulation and cuBLASLt has no algorithm with it (the engine
/// plans such a GEMM with standard accumulation; there is nothing to
/// record for it).
fn tune_one(
    bench: &Bench,
    schedule: &Schedule,
    g: &Gemm,
    key: &str,
    steps: &[usize],
    options: &GemmTuneOptions,
    search: Option<&SearchOptions>,
) -> Result<Option<GemmTuning>, RuntimeError> {
    let fail = |reason: String| RuntimeError::Step {
        index: steps[0],
        step: format!("gemm `{}` m={} n={} k={}", g.name, g.m, g.n, g.k),
        reason,
    };
    // Enough copies that one launch's operands evict the previous ones'.
    let (a_rows, a_cols) = g.a_dims();
    let (b_rows, b_cols) = g.b_dims();
    let per_copy =
        matrix_bytes(a_rows, a_cols, g.lda, g.dtype) + matrix_bytes(b_rows, b_cols, g.ldb, g.dtype);
    let copies = copies(bench.gpu.l2_bytes, per_copy);
    let operands = (0..copies)
        .map(|c| bench.operands(schedule, g, 1 + 10 * c as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let algos = match heuristic_algos(
        &bench.blas,
        g,
        operands[0].addrs(),
        bench.workspace_bytes,
        options.candidates,
    ) {
        Ok(algos) => algos,
        Err(_) if g.fast_accumulation => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    let trial = Trial {
        bench,
        g,
        operands,
        options,
    };
    let (mut candidates, reference) = heuristic_candidates(&trial, algos)?;
    let Some(reference) = reference.filter(|_| candidates.first().is_some_and(|c| c.us.is_some()))
    else {
        return Err(fail(
            "cuBLASLt's first algorithm could not be run for tuning".into(),
        ));
    };
    let (mut summary, mut skipped) = (None, None);
    if let Some(search) = search {
        let start = best_candidate(&candidates);
        match search_candidates(&trial, search, &reference, &mut candidates, start)? {
            Ok(s) => summary = Some(s),
            Err(why) => skipped = Some(why),
        }
    }
    let best = best_candidate(&candidates);
    Ok(Some(GemmTuning {
        key: key.to_string(),
        name: g.name.clone(),
        steps: steps.to_vec(),
        candidates,
        best,
        search: summary,
        search_skipped: skipped,
    }))
}

/// The index of the fastest timed candidate (the first on ties).
fn best_candidate(candidates: &[Candidate]) -> usize {
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if let (Some(us), Some(best_us)) = (c.us, candidates[best].us) {
            if us < best_us {
                best = i;
            }
        }
    }
    best
}

/// Summary of a tuning run for reports: GEMM time per forward with the
/// default algorithms and with the best ones (µs, weighted by how many
/// steps each GEMM is).
pub fn per_forward_us(results: &[GemmTuning]) -> (f64, f64) {
    results.iter().fold((0.0, 0.0), |(d, b), r| {
        let n = r.steps.len() as f64;
        (d + n * r.default_us(), b + n * r.best_us())
    })
}

/// The tuned algorithm of every GEMM step: the best candidate where it
/// beats the default by more than `min_gain` (a fraction, e.g. 0.02 for the
/// measurement noise); steps left out keep the heuristic's choice.
pub fn chosen_algos(results: &[GemmTuning], min_gain: f64) -> BTreeMap<usize, [u64; 8]> {
    let mut chosen = BTreeMap::new();
    for r in results {
        if r.best != 0 && r.best_us() < r.default_us() * (1.0 - min_gain) {
            for &s in &r.steps {
                chosen.insert(s, r.best_algo());
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(us: Option<f64>) -> Candidate {
        Candidate {
            algo: [0; 8],
            us,
            difference: 0.0,
            rejected: None,
            origin: Origin::Heuristic,
        }
    }

    fn tuning(steps: Vec<usize>, times: &[Option<f64>]) -> GemmTuning {
        let candidates: Vec<Candidate> = times.iter().map(|&t| candidate(t)).collect();
        let best = best_candidate(&candidates);
        let mut candidates = candidates;
        for (i, c) in candidates.iter_mut().enumerate() {
            c.algo = [i as u64; 8];
        }
        GemmTuning {
            key: "k".into(),
            name: "g".into(),
            steps,
            candidates,
            best,
            search: None,
            search_skipped: None,
        }
    }

    #[test]
    fn the_fastest_timed_candidate_wins() {
        let t = tuning(vec![1], &[Some(10.0), None, Some(8.0), Some(9.0)]);
        assert_eq!(t.best, 2);
        assert_eq!((t.default_us(), t.best_us()), (10.0, 8.0));
        assert_eq!(tuning(vec![1], &[Some(10.0), None]).best, 0);
    }

    #[test]
    fn only_clear_gains_change_the_schedule() {
        let results = vec![
            tuning(vec![3, 7], &[Some(10.0), Some(8.0)]),
            tuning(vec![4], &[Some(10.0), Some(9.9)]),
            tuning(vec![5], &[Some(10.0)]),
        ];
        let chosen = chosen_algos(&results, 0.02);
        assert_eq!(chosen.keys().copied().collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(chosen[&3], [1; 8]);
        let (default, best) = per_forward_us(&results);
        assert_eq!((default, best), (40.0, 35.9));
    }

    #[test]
    fn searched_candidates_are_reported_apart() {
        let mut t = tuning(vec![1], &[Some(10.0), Some(9.0), Some(12.0)]);
        assert_eq!(t.best_searched_us(), None, "no search ran");
        t.candidates[2].origin = Origin::Search;
        t.candidates.push(Candidate {
            origin: Origin::Search,
            rejected: Some("differs".into()),
            ..candidate(None)
        });
        t.search = Some(SearchSummary {
            space: String::new(),
            start: Default::default(),
            best: Default::default(),
            start_us: 9.0,
            best_us: 9.0,
            measured: 3,
            rejected_unlaunched: 5,
            rejected_launched: 1,
            out_of_time: false,
        });
        assert_eq!(t.best_heuristic_us(), 9.0);
        assert_eq!(t.best_searched_us(), Some(9.0), "nothing beat the start");
        assert_eq!(t.heuristic_counts(), (2, 0));
        t.candidates[2].us = Some(7.0);
        t.best = best_candidate(&t.candidates);
        assert_eq!((t.best, t.best_us()), (2, 7.0));
        assert_eq!(t.best_searched_us(), Some(7.0));
    }

    #[test]
    fn each_search_gets_an_equal_share_of_the_time_left() {
        use std::time::Duration;
        let now = Instant::now();
        let end = now + Duration::from_secs(60);
        assert_eq!(
            search_deadline(now, Some(end), 4, None),
            Some(now + Duration::from_secs(15))
        );
        let own = now + Duration::from_secs(5);
        assert_eq!(search_deadline(now, Some(end), 4, Some(own)), Some(own));
        assert_eq!(search_deadline(now, None, 4, Some(own)), Some(own));
        assert_eq!(search_deadline(now, None, 4, None), None);
        assert_eq!(search_deadline(now, Some(end), 0, None), Some(end));
        assert_eq!(
            search_deadline(now, Some(now), 3, None),
            Some(now),
            "a spent budget leaves nothing"
        );
    }
}
