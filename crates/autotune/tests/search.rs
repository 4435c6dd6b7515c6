//! The coordinate-descent search on synthetic cost functions: it finds the
//! optimum of a convex bowl, never picks a rejected configuration, ignores
//! improvements within the noise, needs `check_all_directions` for diagonal
//! valleys, stops within its budget without measuring anything twice, and
//! stops at a deadline (the tuning budget) keeping what it measured; a
//! screen rejects configurations without measuring them or spending the
//! measurement cap on them.

use std::collections::HashSet;

use fluxc_autotune::{
    coordinate_descent, coordinate_descent_screened, Config, ConfigSpace, Field, Measurement,
    SearchError, SearchOptions,
};

/// threads ∈ {32, ..., 1024} (×2 steps), stages ∈ {1, ..., 8} (±1 steps).
fn space() -> ConfigSpace {
    ConfigSpace::new(vec![
        Field::powers_of_two("threads", 32, 1024),
        Field::new("stages", (1..=8).collect::<Vec<i64>>()),
    ])
}

/// A bowl with its minimum at threads = 256, stages = 3.
fn bowl(values: &[i64]) -> f64 {
    let t = (values[0] as f64).log2() - 8.0;
    let s = values[1] as f64 - 3.0;
    10.0 + t * t + s * s
}

fn at(space: &ConfigSpace, values: &[i64]) -> Config {
    space.config_of(values).expect("values in the space")
}

#[test]
fn finds_the_optimum_of_a_convex_bowl() {
    let s = space();
    for start in [[32, 8], [1024, 1], [256, 3], [64, 5]] {
        let r = coordinate_descent(&s, at(&s, &start), &SearchOptions::default(), |c| {
            Measurement::Time(bowl(&s.values(c)))
        })
        .unwrap();
        assert_eq!(s.values(&r.best), vec![256, 3], "from {start:?}");
        assert_eq!(r.best_time, 10.0);
        assert_eq!(r.start_time, bowl(&start));
    }
}

#[test]
fn never_picks_a_rejected_configuration() {
    // The bowl's minimum (256, 3) is inside the rejected region
    // threads · stages > 500: the best valid point is (128, 3).
    let s = space();
    let rejected = |v: &[i64]| v[0] * v[1] > 500;
    let r = coordinate_descent(&s, at(&s, &[32, 8]), &SearchOptions::default(), |c| {
        let v = s.values(c);
        if rejected(&v) {
            Measurement::Rejected(format!("{} threads x {} stages do not fit", v[0], v[1]))
        } else {
            Measurement::Time(bowl(&v))
        }
    })
    .unwrap();
    assert!(!rejected(&s.values(&r.best)));
    assert_eq!(s.values(&r.best), vec![128, 3]);
    assert!(r
        .measurements
        .iter()
        .any(|(_, m)| matches!(m, Measurement::Rejected(_))));
}

#[test]
fn stops_without_measuring_twice_and_within_budget() {
    let s = space();
    let r = coordinate_descent(&s, at(&s, &[32, 8]), &SearchOptions::default(), |c| {
        Measurement::Time(bowl(&s.values(c)))
    })
    .unwrap();
    let distinct: HashSet<&Config> = r.measurements.iter().map(|(c, _)| c).collect();
    assert_eq!(
        distinct.len(),
        r.measurements.len(),
        "a configuration measured twice"
    );
    assert!(
        r.measurements.len() < 6 * 8,
        "{} measurements",
        r.measurements.len()
    );

    let tight = SearchOptions {
        max_measurements: 5,
        ..SearchOptions::default()
    };
    let r = coordinate_descent(&s, at(&s, &[32, 8]), &tight, |c| {
        Measurement::Time(bowl(&s.values(c)))
    })
    .unwrap();
    assert_eq!(r.measurements.len(), 5);
    assert!(
        r.best_time < r.start_time,
        "it still improved within the budget"
    );
}

#[test]
fn improvements_within_the_noise_are_ignored() {
    let s = space();
    // Every other configuration is 0.5% faster: below 1% noise.
    let r = coordinate_descent(&s, at(&s, &[256, 3]), &SearchOptions::default(), |c| {
        Measurement::Time(if s.values(c) == vec![256, 3] {
            100.0
        } else {
            99.5
        })
    })
    .unwrap();
    assert_eq!(s.values(&r.best), vec![256, 3]);
}

/// Moving one field alone always costs, moving both together pays: a
/// diagonal valley.
fn valley(v: &[i64]) -> f64 {
    1.0 + 5.0 * (v[0] - v[1]).abs() as f64 + (4 - v[0]) as f64
}

#[test]
fn diagonal_valleys_need_all_directions() {
    let s = ConfigSpace::new(vec![
        Field::new("a", vec![0, 1, 2, 3, 4]),
        Field::new("b", vec![0, 1, 2, 3, 4]),
    ]);
    let measure = |c: &Config| Measurement::Time(valley(&s.values(c)));
    let plain =
        coordinate_descent(&s, at(&s, &[0, 0]), &SearchOptions::default(), measure).unwrap();
    assert_eq!(s.values(&plain.best), vec![0, 0], "stuck without diagonals");
    let all = SearchOptions {
        check_all_directions: true,
        ..SearchOptions::default()
    };
    let wide = coordinate_descent(&s, at(&s, &[0, 0]), &all, measure).unwrap();
    assert_eq!(s.values(&wide.best), vec![4, 4]);
    assert_eq!(wide.best_time, 1.0);
}

#[test]
fn a_rejected_or_foreign_start_is_an_error() {
    let s = space();
    let err = coordinate_descent(&s, at(&s, &[32, 1]), &SearchOptions::default(), |_| {
        Measurement::Rejected("too much shared memory".into())
    })
    .unwrap_err();
    assert_eq!(
        err,
        SearchError::StartRejected("too much shared memory".into())
    );
    let err = coordinate_descent(&s, Config(vec![99, 0]), &SearchOptions::default(), |_| {
        Measurement::Time(1.0)
    })
    .unwrap_err();
    assert_eq!(err, SearchError::BadStart);
}

#[test]
fn neighbourhoods() {
    let s = space();
    let c = at(&s, &[256, 1]);
    let n: Vec<Vec<i64>> = s.neighbours(&c).iter().map(|c| s.values(c)).collect();
    assert_eq!(n, vec![vec![128, 1], vec![512, 1], vec![256, 2]]);
    assert_eq!(s.all_directions(&c).len(), 3 * 2 - 1);
    assert_eq!(s.describe(&c), "threads=256 stages=1");
}

#[test]
fn a_passed_deadline_stops_after_the_start() {
    let s = space();
    let options = SearchOptions {
        deadline: Some(std::time::Instant::now()),
        ..SearchOptions::default()
    };
    let r = coordinate_descent(&s, at(&s, &[32, 8]), &options, |c| {
        Measurement::Time(bowl(&s.values(c)))
    })
    .unwrap();
    assert!(r.out_of_time);
    assert_eq!(r.measurements.len(), 1, "only the start is measured");
    assert_eq!(s.values(&r.best), vec![32, 8], "the start is kept");
    assert_eq!(r.best_time, r.start_time);
}

#[test]
fn the_deadline_cuts_a_slow_search_short() {
    let s = space();
    let slow = |c: &Config| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        Measurement::Time(bowl(&s.values(c)))
    };
    let full = coordinate_descent(&s, at(&s, &[32, 8]), &SearchOptions::default(), slow).unwrap();
    assert!(!full.out_of_time);
    // 5 ms a measurement, 12 ms of budget: three measurements at most
    // (slower sleeps only make it fewer), where the full search takes more.
    let options = SearchOptions {
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_millis(12)),
        ..SearchOptions::default()
    };
    let cut = coordinate_descent(&s, at(&s, &[32, 8]), &options, slow).unwrap();
    assert!(cut.out_of_time);
    assert!(
        (1..=3).contains(&cut.measurements.len()) && full.measurements.len() > 3,
        "{} of {} measurements",
        cut.measurements.len(),
        full.measurements.len()
    );
    assert!(cut.best_time >= full.best_time);
}

#[test]
fn screened_out_configurations_are_never_measured_nor_counted() {
    // The same region as above, now known before measuring: the screen
    // turns it down, the measure never sees it, and the cap counts only
    // what was measured.
    let s = space();
    let fits = |v: &[i64]| v[0] * v[1] <= 500;
    let mut measured: Vec<Vec<i64>> = Vec::new();
    let options = SearchOptions {
        max_measurements: 6,
        ..SearchOptions::default()
    };
    let r = coordinate_descent_screened(
        &s,
        at(&s, &[32, 8]),
        &options,
        |c| {
            let v = s.values(c);
            if fits(&v) {
                Ok(v)
            } else {
                Err(format!("{} threads x {} stages do not fit", v[0], v[1]))
            }
        },
        |_, v| {
            measured.push(v.clone());
            Measurement::Time(bowl(&v))
        },
    )
    .unwrap();
    assert!(measured.iter().all(|v| fits(v)), "{measured:?}");
    assert_eq!(r.measured, measured.len());
    assert_eq!(r.measured, 6, "the cap counts measurements only");
    let screened = r
        .measurements
        .iter()
        .filter(|(_, m)| matches!(m, Measurement::Rejected(_)))
        .count();
    assert!(screened > 0, "some neighbours were screened out");
    assert_eq!(r.measurements.len(), r.measured + screened);
    assert!(fits(&s.values(&r.best)));

    let err = coordinate_descent_screened(
        &s,
        at(&s, &[1024, 8]),
        &options,
        |_| Err::<(), _>("unsupported".to_string()),
        |_, ()| Measurement::Time(1.0),
    )
    .unwrap_err();
    assert_eq!(err, SearchError::StartRejected("unsupported".into()));
}

#[test]
fn a_space_lists_every_configuration_once() {
    let space = ConfigSpace::new(vec![Field::new("a", [1, 2, 3]), Field::new("b", [10, 20])]);
    let all = space.all();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0], Config(vec![0, 0]));
    assert_eq!(all[5], Config(vec![2, 1]));
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 6);
}
