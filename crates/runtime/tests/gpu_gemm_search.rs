//! The cuBLASLt configuration search on the GPU: for a bf16 GEMM of 4096
//! tokens × 3072 × 3072 with a bias and for the same GEMM in fp8 with
//! per-row (outer-vector) scales, `tune_gemms` times the heuristic's
//! candidates, then searches algorithm configurations from the fastest.
//! The search must run (its space built from cuBLASLt's ids and
//! capabilities, the heuristic's configuration read back), end at least as
//! fast as the heuristic's first algorithm, and accept only configurations
//! whose output is within the tolerance of the default's. The bf16 search
//! must also have timed configurations beyond its start.
//!
//! Needs an sm_90 GPU with the CUDA 13 libraries (cuBLASLt included):
//! `cargo test --release -p fluxc-runtime --test gpu_gemm_search -- --nocapture`.
//! Without the CUDA libraries it says why it skips and passes; with them but
//! without a usable GPU it fails saying why.

use fluxc_artifact::{
    Buffer, ElemType, Gemm, GemmEpilogue, GemmScales, Region, ScaleMode, Schedule, Step, Tensor,
};
use fluxc_runtime::gemm_tuning::{tune_gemms, GemmTuneOptions, GemmTuning, Origin};
use fluxc_runtime::RuntimeError;

/// Output features (rows of D), tokens (columns of D), input features.
const M: u64 = 3072;
const N: u64 = 4096;
const K: u64 = 3072;

/// `y = x · wᵀ + bias` in bf16 and `y8 = (x8 · w8ᵀ) · sx · sw + bias` in fp8.
fn schedule() -> Schedule {
    use ElemType::{Bf16, F8e4m3, F32};
    use Region::{Arena, Weights};
    let buffers = vec![
        Buffer::new(0, "w", Bf16, vec![M, K], Weights, 0),
        Buffer::new(1, "bias", Bf16, vec![M], Weights, 0),
        Buffer::new(2, "x", Bf16, vec![N, K], Arena, 0),
        Buffer::new(3, "y", Bf16, vec![N, M], Arena, 0),
        Buffer::new(4, "w8", F8e4m3, vec![M, K], Weights, 0),
        Buffer::new(5, "sw", F32, vec![M, 1], Weights, 0),
        Buffer::new(6, "x8", F8e4m3, vec![N, K], Arena, 0),
        Buffer::new(7, "sx", F32, vec![N], Arena, 0),
    ];
    let gemm = |name: &str, dtype, a, b, scales| {
        Step::Gemm(Gemm {
            name: name.into(),
            dtype,
            trans_a: true,
            trans_b: false,
            m: M,
            n: N,
            k: K,
            a: Tensor::of(a),
            lda: K,
            b: Tensor::of(b),
            ldb: K,
            d: Tensor::of(3),
            ldd: M,
            bias: Some(Tensor::of(1)),
            epilogue: GemmEpilogue::Bias,
            d_dtype: (dtype == F8e4m3).then_some(Bf16),
            scales,
            fast_accumulation: false,
            algo: None,
            c: None,
        })
    };
    let per_row = GemmScales {
        mode: ScaleMode::OuterVector,
        a: Tensor::of(5),
        b: Tensor::of(7),
    };
    Schedule {
        arena_bytes: 0,
        weight_bytes: 0,
        scratch_bytes: 0,
        gemm_workspace_bytes: 32 << 20,
        buffers,
        inputs: vec![],
        outputs: vec![],
        steps: vec![
            gemm("bf16", Bf16, 0, 2, None),
            gemm("fp8 per row", F8e4m3, 4, 6, Some(per_row)),
        ],
    }
}

/// Checks one GEMM's search and prints what it did.
fn check(g: &GemmTuning, tolerance: f64) {
    let s = g.search.as_ref().unwrap_or_else(|| {
        panic!(
            "{}: the search did not run: {}",
            g.name,
            g.search_skipped.as_deref().unwrap_or("no reason given")
        )
    });
    let searched = g.best_searched_us().expect("a search ran");
    println!(
        "{}: default {:.1} µs, best heuristic {:.1} µs, searched {:.1} µs ({} measured, {} \
         rejected before launch, {} after{}); from {} to {}; space {}",
        g.name,
        g.default_us(),
        g.best_heuristic_us(),
        searched,
        s.measured,
        s.rejected_unlaunched,
        s.rejected_launched,
        if s.out_of_time { ", out of time" } else { "" },
        s.start.describe(),
        s.best.describe(),
        s.space
    );
    assert!(
        searched <= g.default_us(),
        "{}: searched {searched} µs, the heuristic's first {} µs",
        g.name,
        g.default_us()
    );
    assert!(
        g.best_us() <= searched,
        "{}: the best is the fastest",
        g.name
    );
    for c in g.candidates.iter().filter(|c| c.origin == Origin::Search) {
        match c.us {
            Some(_) => assert!(
                c.difference <= tolerance,
                "{}: a searched candidate's output is {:.2e} off",
                g.name,
                c.difference
            ),
            None => assert!(c.rejected.is_some(), "{}: rejections say why", g.name),
        }
    }
    assert!(
        s.measured + s.rejected_unlaunched > 1,
        "{}: the search went beyond its start",
        g.name
    );
}

#[test]
fn the_configuration_search_beats_or_matches_the_heuristic() {
    const TEST: &str = "the_configuration_search_beats_or_matches_the_heuristic";
    if !fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP {TEST}: no CUDA driver library here");
        return;
    }
    let options = GemmTuneOptions::default();
    let run = match tune_gemms(&schedule(), &options, |done, total, g| {
        println!("[{done}/{total}] {} done", g.name)
    }) {
        Err(RuntimeError::NoCuda(why)) => {
            println!("SKIP {TEST}: {why}");
            return;
        }
        other => other.expect("GEMM tuning on the GPU"),
    };
    assert_eq!(run.gemms.len(), 2, "two distinct GEMMs");
    assert_eq!(run.out_of_time, 0);
    for g in &run.gemms {
        check(g, options.tolerance);
    }
    let bf16 = &run.gemms[0];
    let timed_searched = bf16
        .candidates
        .iter()
        .filter(|c| c.origin == Origin::Search && c.us.is_some())
        .count();
    assert!(
        timed_searched > 0,
        "the bf16 search timed configurations beyond its start"
    );
}
