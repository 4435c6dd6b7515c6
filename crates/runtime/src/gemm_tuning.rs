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
//! The caller records the winner in the schedule (`Gemm::algo`), which the
//! engine then checks and uses. `only` restricts the run to some GEMMs (the
//! ones a tuning cache lacks) and `deadline` stops it before the next GEMM
//! once a tuning budget is spent.
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

use crate::bench::{copies, pseudo_random, rel_l2, BenchContext, BenchTiming};
use crate::blas::{heuristic_algos, BlasHandle, GemmAddrs, GemmPlan};
use crate::convert::decode;
use crate::cuda::DeviceBuffer;
use crate::RuntimeError;

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
            },
            tolerance: 1e-2,
            only: None,
            deadline: None,
        }
    }
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
    bias: Option<(DeviceBuffer, ElemType)>,
    scales: Option<(DeviceBuffer, DeviceBuffer)>,
}

impl Operands {
    fn addrs(&self) -> GemmAddrs {
        GemmAddrs {
            a: self.a.ptr(),
            b: self.b.ptr(),
            d: self.d.ptr(),
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
}

/// Times cuBLASLt's candidate algorithms for every distinct GEMM of
/// `schedule` on the GPU (see the module docs; `options.only` and
/// `options.deadline` limit which), calling `progress(done, total, result)`
/// after each. Fails like the engine does without CUDA or a device
/// ([`RuntimeError::NoCuda`], [`RuntimeError::Device`]).
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
    for (done, (key, steps)) in groups.iter().enumerate() {
        if options.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(GemmTuneRun {
                device,
                driver,
                gemms: results,
                out_of_time: groups.len() - done,
            });
        }
        let Step::Gemm(template) = &schedule.steps[steps[0]] else {
            unreachable!("distinct_gemms groups GEMM steps")
        };
        let g = Gemm {
            algo: None,
            ..template.clone()
        };
        let fail = |reason: String| RuntimeError::Step {
            index: steps[0],
            step: format!("gemm `{}` m={} n={} k={}", g.name, g.m, g.n, g.k),
            reason,
        };
        // Enough copies that one launch's operands evict the previous ones'.
        let (a_rows, a_cols) = g.a_dims();
        let (b_rows, b_cols) = g.b_dims();
        let per_copy = matrix_bytes(a_rows, a_cols, g.lda, g.dtype)
            + matrix_bytes(b_rows, b_cols, g.ldb, g.dtype);
        let copies = copies(bench.gpu.l2_bytes, per_copy);
        let operands = (0..copies)
            .map(|c| bench.operands(schedule, &g, 1 + 10 * c as u64))
            .collect::<Result<Vec<_>, _>>()?;
        let algos = heuristic_algos(
            &bench.blas,
            &g,
            operands[0].addrs(),
            bench.workspace_bytes,
            options.candidates,
        )
        .map_err(fail)?;
        let mut candidates: Vec<Candidate> = Vec::with_capacity(algos.len());
        let mut reference: Option<Vec<f32>> = None;
        for algo in algos {
            let with_algo = Gemm {
                algo: Some(algo),
                ..g.clone()
            };
            let plans: Result<Vec<GemmPlan>, String> = operands
                .iter()
                .map(|o| GemmPlan::new(&bench.blas, &with_algo, o.addrs(), bench.workspace_bytes))
                .collect();
            let plans = match plans {
                Ok(plans) => plans,
                Err(why) => {
                    candidates.push(Candidate {
                        algo,
                        us: None,
                        difference: f64::NAN,
                        rejected: Some(why),
                    });
                    continue;
                }
            };
            let out = bench.output(&plans[0], &operands[0], &g)?;
            let difference = match &reference {
                Some(r) => rel_l2(&out, r),
                None => 0.0,
            };
            if reference.is_none() {
                reference = Some(out);
            }
            if difference.is_nan() || difference > options.tolerance {
                candidates.push(Candidate {
                    algo,
                    us: None,
                    difference,
                    rejected: Some(format!(
                        "its output differs from the default algorithm's by {difference:.2e}"
                    )),
                });
                continue;
            }
            let us = bench.time(&plans, options)?;
            candidates.push(Candidate {
                algo,
                us: Some(us),
                difference,
                rejected: None,
            });
        }
        if candidates.first().is_none_or(|c| c.us.is_none()) {
            return Err(fail(
                "cuBLASLt's first algorithm could not be run for tuning".into(),
            ));
        }
        let best = best_candidate(&candidates);
        let result = GemmTuning {
            key: key.clone(),
            name: g.name.clone(),
            steps: steps.clone(),
            candidates,
            best,
        };
        progress(done + 1, groups.len(), &result);
        results.push(result);
    }
    Ok(GemmTuneRun {
        device,
        driver,
        gemms: results,
        out_of_time: 0,
    })
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
}
