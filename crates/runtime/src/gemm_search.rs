//! Coordinate descent over one GEMM's [`GemmSpace`], from the best
//! heuristic algorithm.
//!
//! `search_space` runs `fluxc_autotune`'s screened coordinate descent:
//! each configuration is first screened by the space (its id's
//! capabilities), then prepared by the caller (on the GPU: built with
//! `cublasLtMatmulAlgoInit` and the configuration attributes, and checked
//! with `cublasLtMatmulAlgoCheck`); either rejection costs no launch and
//! no share of the measurement cap. Only prepared configurations reach the
//! caller's measure (timing, after checking the output). The starting
//! configuration is the heuristic algorithm already timed: its time is
//! taken, not measured again.

use fluxc_autotune::{
    coordinate_descent_screened, Measurement, SearchError, SearchOptions, SearchResult,
};

use crate::gemm_space::{AlgoConfig, GemmSpace};

/// What the search of one GEMM did, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSummary {
    /// The space, `algo_id in [...], tile in [...], ...`.
    pub space: String,
    /// The starting (best heuristic) algorithm's configuration.
    pub start: AlgoConfig,
    /// The best configuration found.
    pub best: AlgoConfig,
    /// The starting algorithm's time, µs.
    pub start_us: f64,
    /// The best configuration's time, µs.
    pub best_us: f64,
    /// Configurations timed (the start included, though not timed again).
    pub measured: usize,
    /// Configurations rejected before any launch (capabilities,
    /// `cublasLtMatmulAlgoCheck`, workspace).
    pub rejected_unlaunched: usize,
    /// Configurations that ran and were rejected (output off the default's).
    pub rejected_launched: usize,
    /// The deadline stopped the search before it converged.
    pub out_of_time: bool,
}

/// Searches `space` from its start (timed at `start_us`): `prepare` builds
/// and validates a configuration or says why it cannot run, `measure` times
/// a prepared one. See the module docs.
pub(crate) fn search_space<P>(
    space: &GemmSpace,
    options: &SearchOptions,
    start_us: f64,
    mut prepare: impl FnMut(&AlgoConfig) -> Result<P, String>,
    mut measure: impl FnMut(&AlgoConfig, P) -> Measurement,
) -> Result<SearchSummary, SearchError> {
    let start = space.start_config();
    let result: SearchResult = coordinate_descent_screened(
        space.space(),
        start.clone(),
        options,
        |c| {
            if *c == start {
                return Ok(None);
            }
            let a = space.algo_config(c);
            space.screen(&a)?;
            prepare(&a).map(Some)
        },
        |c, prepared| match prepared {
            None => Measurement::Time(start_us),
            Some(p) => measure(&space.algo_config(c), p),
        },
    )?;
    let rejected = result
        .measurements
        .iter()
        .filter(|(_, m)| matches!(m, Measurement::Rejected(_)))
        .count();
    let unlaunched = result.measurements.len() - result.measured;
    Ok(SearchSummary {
        space: space.space().to_string(),
        start: *space.start(),
        best: space.algo_config(&result.best),
        start_us: result.start_time,
        best_us: result.best_time,
        measured: result.measured,
        rejected_unlaunched: unlaunched,
        rejected_launched: rejected - unlaunched,
        out_of_time: result.out_of_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm_space::{AlgoCaps, CapabilitySource};
    use std::cell::RefCell;

    /// Algorithm 1: tiles 1..=8, stages 1..=4, split K, swizzling;
    /// algorithm 2: tile 1, stages 1 only.
    struct Fake;

    impl CapabilitySource for Fake {
        fn algo_ids(&self) -> Result<Vec<i32>, String> {
            Ok(vec![1, 2])
        }
        fn caps(&self, id: i32) -> Result<AlgoCaps, String> {
            Ok(if id == 1 {
                AlgoCaps {
                    tiles: (1..=8).collect(),
                    stages: (1..=4).collect(),
                    split_k: true,
                    reduction_mask: 2,
                    swizzle: true,
                }
            } else {
                AlgoCaps {
                    tiles: vec![1],
                    stages: vec![1],
                    ..AlgoCaps::default()
                }
            })
        }
    }

    fn heuristic() -> AlgoConfig {
        AlgoConfig {
            algo_id: 1,
            tile: 2,
            stages: 1,
            split_k: 1,
            cluster_shape: 2,
            ..AlgoConfig::default()
        }
    }

    /// A cost with its minimum at tile 6, stages 3, split K 1, no swizzle,
    /// cluster 2×1×1 (3).
    fn cost(a: &AlgoConfig) -> f64 {
        let d = |x: u32, y: u32| (f64::from(x) - f64::from(y)).powi(2);
        100.0
            + 4.0 * d(a.tile, 6)
            + 3.0 * d(a.stages, 3)
            + d(a.split_k, 1)
            + 5.0 * f64::from(a.swizzle)
            + if a.cluster_shape == 3 { 0.0 } else { 2.0 }
    }

    #[test]
    fn starts_at_the_heuristic_without_timing_it_again() {
        let space = GemmSpace::new(&Fake, &heuristic()).unwrap();
        let timed = RefCell::new(Vec::new());
        let s = search_space(
            &space,
            &SearchOptions::default(),
            cost(&heuristic()),
            |a| Ok(*a),
            |_, a| {
                timed.borrow_mut().push(a);
                Measurement::Time(cost(&a))
            },
        )
        .unwrap();
        assert_eq!(s.start, heuristic());
        assert!(!timed.borrow().contains(&heuristic()), "start not re-timed");
        assert_eq!(s.measured, timed.borrow().len() + 1);
        assert_eq!(
            (s.best.tile, s.best.stages, s.best.cluster_shape),
            (6, 3, 3)
        );
        assert_eq!(s.best_us, 100.0);
        assert!(s.rejected_unlaunched > 0, "algorithm 2's neighbours");
        assert_eq!(s.rejected_launched, 0);
        assert!(s
            .space
            .starts_with("algo_id in [1, 2], tile in [1, 2, 3, 4, 5, 6, 7, 8]"));
    }

    #[test]
    fn respects_the_cap_and_rejects_before_launch() {
        let space = GemmSpace::new(&Fake, &heuristic()).unwrap();
        let options = SearchOptions {
            max_measurements: 5,
            ..SearchOptions::default()
        };
        let launched = RefCell::new(0usize);
        let s = search_space(
            &space,
            &options,
            cost(&heuristic()),
            // cuBLASLt's check turns down every split K.
            |a| {
                if a.split_k > 1 {
                    Err("CUBLAS_STATUS_NOT_SUPPORTED".into())
                } else {
                    Ok(*a)
                }
            },
            |_, a| {
                *launched.borrow_mut() += 1;
                if a.swizzle == 1 {
                    Measurement::Rejected("output differs".into())
                } else {
                    Measurement::Time(cost(&a))
                }
            },
        )
        .unwrap();
        assert_eq!(s.measured, 5, "the cap");
        assert_eq!(*launched.borrow(), 4, "the start is not launched");
        assert!(s.rejected_unlaunched >= 2, "split K 2 and algorithm 2");
        assert!(s.best_us < cost(&heuristic()));
        assert_eq!(s.best.split_k, 1);
        assert_eq!(s.best.swizzle, 0);
    }
}
