//! Coordinate descent over a [`ConfigSpace`], as Inductor's
//! `coordinate_descent_tuning` does it.
//!
//! From a starting configuration (the heuristic default), try every
//! neighbour along one field at a time; move to the best one only when it is
//! faster by more than the measurement noise; repeat until no neighbour
//! improves. With `check_all_directions`, a local optimum is then challenged
//! by the combined neighbourhood (several fields changed at once), and the
//! descent resumes from any improvement found there. Every measurement is
//! cached, so no configuration is timed twice; configurations the measure
//! rejects (invalid tiles, shared memory over the limit, results that differ
//! from the default's) are never chosen.
//!
//! Two limits stop a search early: `max_measurements`, and a `deadline`
//! (the tuning budget), checked before every measurement but the first: the
//! starting configuration is always measured. A search the deadline cut
//! short says so (`SearchResult::out_of_time`); its best is still valid
//! (measured and accepted), only perhaps not a local optimum.
//!
//! [`coordinate_descent_screened`] adds a screen run before each
//! measurement: configurations it turns down (an unsupported combination a
//! library can tell without running anything) are recorded as rejected
//! without being measured, and do not count towards `max_measurements`;
//! what it accepts is handed to the measure (e.g. the built algorithm).

use std::collections::HashMap;
use std::time::Instant;

use crate::space::{Config, ConfigSpace};

/// Limits and switches of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOptions {
    /// A candidate must beat the incumbent by more than this fraction of its
    /// time (e.g. 0.01 = 1%) to replace it.
    pub noise: f64,
    /// After converging, also try every combination of single steps.
    pub check_all_directions: bool,
    /// At most this many measurements (the starting configuration's
    /// counts; configurations a screen turns down do not).
    pub max_measurements: usize,
    /// No measurement starts after this instant (the starting
    /// configuration's excepted); `None`: no time limit.
    pub deadline: Option<Instant>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            noise: 0.01,
            check_all_directions: false,
            max_measurements: 200,
            deadline: None,
        }
    }
}

/// What measuring one configuration gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Measurement {
    /// It ran in this many microseconds (or any cost unit).
    Time(f64),
    /// It cannot run or gave wrong results; the reason is kept for reports.
    Rejected(String),
}

/// The outcome of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The best configuration found.
    pub best: Config,
    /// Its time.
    pub best_time: f64,
    /// The starting configuration's time.
    pub start_time: f64,
    /// Every measurement in the order taken, screened-out configurations
    /// included (as [`Measurement::Rejected`]).
    pub measurements: Vec<(Config, Measurement)>,
    /// How many configurations were measured (screened-out ones not
    /// counted): what `max_measurements` limits.
    pub measured: usize,
    /// The deadline passed before the search converged.
    pub out_of_time: bool,
}

/// Why a search could not run.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// The starting configuration itself was rejected.
    #[error("the starting configuration was rejected: {0}")]
    StartRejected(String),
    /// The starting configuration does not fit the space.
    #[error("the starting configuration does not fit the space")]
    BadStart,
}

/// Runs coordinate descent from `start`, measuring with `measure`.
pub fn coordinate_descent(
    space: &ConfigSpace,
    start: Config,
    options: &SearchOptions,
    mut measure: impl FnMut(&Config) -> Measurement,
) -> Result<SearchResult, SearchError> {
    coordinate_descent_screened(space, start, options, |_| Ok(()), |c, ()| measure(c))
}

/// Runs coordinate descent from `start`: every configuration goes through
/// `screen` first; one it turns down (`Err(reason)`) is rejected without a
/// measurement and without counting towards `max_measurements`, one it
/// accepts is measured by `measure` with what the screen returned.
pub fn coordinate_descent_screened<P>(
    space: &ConfigSpace,
    start: Config,
    options: &SearchOptions,
    mut screen: impl FnMut(&Config) -> Result<P, String>,
    mut measure: impl FnMut(&Config, P) -> Measurement,
) -> Result<SearchResult, SearchError> {
    let fits = start.0.len() == space.fields.len()
        && start
            .0
            .iter()
            .zip(&space.fields)
            .all(|(&i, f)| i < f.values.len());
    if !fits {
        return Err(SearchError::BadStart);
    }
    let mut seen: HashMap<Config, Measurement> = HashMap::new();
    let mut order: Vec<(Config, Measurement)> = Vec::new();
    let mut measured = 0usize;
    let mut out_of_time = false;
    let mut time_of = |c: &Config, order: &mut Vec<(Config, Measurement)>| -> Option<f64> {
        if let Some(m) = seen.get(c) {
            return time(m);
        }
        if measured >= options.max_measurements {
            return None;
        }
        let late = options.deadline.is_some_and(|d| Instant::now() >= d);
        if late && !order.is_empty() {
            out_of_time = true;
            return None;
        }
        let m = match screen(c) {
            Ok(prepared) => {
                measured += 1;
                measure(c, prepared)
            }
            Err(why) => Measurement::Rejected(why),
        };
        seen.insert(c.clone(), m.clone());
        order.push((c.clone(), m.clone()));
        time(&m)
    };

    let start_time = match time_of(&start, &mut order) {
        Some(t) => t,
        None => {
            let why = match order.first() {
                Some((_, Measurement::Rejected(why))) => why.clone(),
                _ => "no measurement".into(),
            };
            return Err(SearchError::StartRejected(why));
        }
    };
    let (mut best, mut best_time) = (start, start_time);
    loop {
        let improved = step(
            &space.neighbours(&best),
            &mut best,
            &mut best_time,
            options,
            &mut |c| time_of(c, &mut order),
        );
        if improved {
            continue;
        }
        if options.check_all_directions {
            let wider = step(
                &space.all_directions(&best),
                &mut best,
                &mut best_time,
                options,
                &mut |c| time_of(c, &mut order),
            );
            if wider {
                continue;
            }
        }
        break;
    }
    Ok(SearchResult {
        best,
        best_time,
        start_time,
        measurements: order,
        measured,
        out_of_time,
    })
}

/// Moves to the fastest of `candidates` if it beats the incumbent by more
/// than the noise; returns whether it moved.
fn step(
    candidates: &[Config],
    best: &mut Config,
    best_time: &mut f64,
    options: &SearchOptions,
    time_of: &mut dyn FnMut(&Config) -> Option<f64>,
) -> bool {
    let mut winner: Option<(Config, f64)> = None;
    for c in candidates {
        if let Some(t) = time_of(c) {
            if winner.as_ref().is_none_or(|(_, w)| t < *w) {
                winner = Some((c.clone(), t));
            }
        }
    }
    match winner {
        Some((c, t)) if t < *best_time * (1.0 - options.noise) => {
            *best = c;
            *best_time = t;
            true
        }
        _ => false,
    }
}

fn time(m: &Measurement) -> Option<f64> {
    match m {
        Measurement::Time(t) if t.is_finite() => Some(*t),
        _ => None,
    }
}
