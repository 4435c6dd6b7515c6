//! `fluxc ab <A> <B> --weights <checkpoint>`: times two artifacts of the same
//! model against each other in one process, on the same inputs, in
//! alternating rounds (A then B, then B then A, ...), after one untimed
//! round of each that brings the GPU to its power limit, so that the GPU's
//! clock drift over a run (several ms per forward on the H200) falls on
//! both alike. Prints each round's medians and the paired difference B − A
//! per round; a difference is called a speed-up only when every round
//! agrees on its sign. Also prints how far B's outputs are from A's, a
//! check that the two compute the same thing.

use std::path::Path;

use fluxc_runtime::{Artifact, Engine, LoadOptions, Stats};

use crate::run::{pattern, read_inputs, rel_l2};

/// What `fluxc ab` was asked to do.
pub struct AbArgs<'a> {
    /// The baseline artifact.
    pub a: &'a Path,
    /// The candidate artifact.
    pub b: &'a Path,
    /// The checkpoint both load.
    pub weights: &'a Path,
    /// Safetensors file with the inputs (default: a deterministic pattern).
    pub inputs: Option<&'a Path>,
    /// Alternating rounds.
    pub rounds: usize,
    /// Timed replays per artifact and round.
    pub replays: usize,
    /// Where to write the result as JSON.
    pub json: Option<&'a Path>,
}

/// The medians of each round, and what they say.
#[derive(Debug, PartialEq)]
pub struct AbSummary {
    /// Median GPU ms per forward of A in each round.
    pub a: Vec<f64>,
    /// The same for B.
    pub b: Vec<f64>,
    /// Statistics of B − A over the rounds.
    pub diff: Stats,
    /// Every round has B faster (−1), every round A faster (1), or not (0).
    pub sign: i32,
}

/// Pairs the rounds' medians (`a[r]` and `b[r]` from round r).
pub fn summarize(a: &[f64], b: &[f64]) -> Option<AbSummary> {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let diff = Stats::of(&diffs)?;
    let sign = if diffs.iter().all(|&d| d < 0.0) {
        -1
    } else if diffs.iter().all(|&d| d > 0.0) {
        1
    } else {
        0
    };
    Some(AbSummary {
        a: a.to_vec(),
        b: b.to_vec(),
        diff,
        sign,
    })
}

/// Runs the comparison.
pub fn run(args: &AbArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.rounds == 0 || args.replays == 0 {
        return Err("--rounds and --replays must be at least 1".into());
    }
    // Both artifacts must take the same inputs; checked before the GPU.
    let (art_a, art_b) = (Artifact::load(args.a)?, Artifact::load(args.b)?);
    let shapes = |art: &Artifact| -> Vec<(String, Vec<u64>)> {
        art.schedule
            .inputs
            .iter()
            .map(|i| {
                let shape = art
                    .buffer(i.buffer)
                    .map(|b| b.shape.clone())
                    .unwrap_or_default();
                (i.name.clone(), shape)
            })
            .collect()
    };
    if shapes(&art_a) != shapes(&art_b) {
        return Err(format!(
            "`{}` and `{}` take different inputs: {:?} against {:?}",
            args.a.display(),
            args.b.display(),
            shapes(&art_a),
            shapes(&art_b)
        )
        .into());
    }
    let inputs = match args.inputs {
        Some(path) => Some(read_inputs(path, &art_a, false)?.0),
        None => None,
    };
    drop((art_a, art_b));

    let options = LoadOptions::default();
    let mut engines = [
        Engine::load(args.a, args.weights, &options)?,
        Engine::load(args.b, args.weights, &options)?,
    ];
    for engine in &mut engines {
        for (i, binding) in engine.inputs().to_vec().iter().enumerate() {
            let data = match &inputs {
                Some(map) => map[&binding.name].clone(),
                None => pattern(i, engine.input_buffer(&binding.name)?.elements() as usize),
            };
            engine.set_input(&binding.name, &data)?;
        }
        engine.run()?;
    }
    for binding in engines[0].outputs().to_vec() {
        let (a, b) = (
            engines[0].output(&binding.name)?,
            engines[1].output(&binding.name)?,
        );
        println!(
            "output {}: B vs A relative L2 {:.3e}",
            binding.name,
            rel_l2(&b, &a)
        );
    }

    // One untimed round first: the GPU comes to these rounds idle (loading,
    // the output check) and reaches its power limit within about a second
    // of back-to-back forwards, so round 0 used to time its first artifact
    // on a faster clock than the rest (A/A runs: +1.2 ms in round 0).
    for engine in &mut engines {
        engine.time_replays(1, args.replays)?;
    }
    let mut medians = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        // A first in even rounds, B first in odd ones.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let timing = engines[which].time_replays(1, args.replays)?;
            let stats = timing.gpu().ok_or("no timed replays")?;
            medians[which].push(stats.median);
        }
        println!(
            "round {round}: A {:.3} ms, B {:.3} ms (B − A {:+.3})",
            medians[0][round],
            medians[1][round],
            medians[1][round] - medians[0][round]
        );
    }
    let s = summarize(&medians[0], &medians[1]).ok_or("no rounds")?;
    let verdict = match s.sign {
        -1 => "B is faster in every round",
        1 => "A is faster in every round",
        _ => "the rounds disagree: within noise",
    };
    println!(
        "B − A: median {:+.3} ms, min {:+.3}, max {:+.3} over {} rounds of {} replays; {verdict}",
        s.diff.median, s.diff.min, s.diff.max, args.rounds, args.replays
    );
    if let Some(path) = args.json {
        let json = serde_json::json!({
            "a": args.a.display().to_string(),
            "b": args.b.display().to_string(),
            "device": engines[0].device_name(),
            "rounds": args.rounds,
            "replays": args.replays,
            "a_round_median_ms": s.a,
            "b_round_median_ms": s.b,
            "b_minus_a_ms": s.diff,
            "verdict": verdict,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_speedup_needs_every_round() {
        let s = summarize(&[80.0, 81.0, 79.5], &[79.0, 80.5, 79.4]).unwrap();
        assert_eq!(s.sign, -1);
        assert!((s.diff.median + 0.5).abs() < 1e-12);
        let mixed = summarize(&[80.0, 81.0], &[79.0, 81.5]).unwrap();
        assert_eq!(mixed.sign, 0);
        let slower = summarize(&[80.0], &[80.2]).unwrap();
        assert_eq!(slower.sign, 1);
        assert!(summarize(&[], &[]).is_none());
    }
}
