//! What the launch tuners (`kernel_tuning`, `attention_tuning`) do with one
//! benchmarked candidate: a GPU failure is kept for the caller and ends the
//! candidate, and a candidate's outputs must match those of the first one
//! measured (the default configuration) before its time may count.
//!
//! Why one place: both tuners turn a bench result into a
//! [`Measurement`] the same way, and a candidate that computes something
//! else must never win however fast it is.

use std::cell::RefCell;

use fluxc_autotune::Measurement;
use fluxc_runtime::bench::rel_l2;
use fluxc_runtime::RuntimeError;

/// A bench run's result: `Err` for a GPU failure (kept in `failure`, the
/// first one only), `Ok(Err(why))` for a candidate the bench refused.
pub fn measured<R>(
    run: Result<Result<R, String>, RuntimeError>,
    failure: &RefCell<Option<RuntimeError>>,
) -> Result<R, Measurement> {
    match run {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(why)) => Err(Measurement::Rejected(why)),
        Err(e) => {
            failure.borrow_mut().get_or_insert(e);
            Err(Measurement::Rejected("the GPU failed".into()))
        }
    }
}

/// The outputs of the first candidate checked, against which later ones
/// are compared by relative L2 distance.
pub struct ReferenceOutputs {
    reference: RefCell<Option<Vec<Vec<f32>>>>,
    tolerance: f64,
}

impl ReferenceOutputs {
    /// No reference yet; candidates may differ from it by `tolerance`.
    pub fn new(tolerance: f64) -> Self {
        ReferenceOutputs {
            reference: RefCell::new(None),
            tolerance,
        }
    }

    /// Keeps `outputs` as the reference if there is none yet; otherwise
    /// says why they are rejected if any differs by more than the tolerance
    /// (or is NaN).
    pub fn check(&self, outputs: Vec<Vec<f32>>) -> Result<(), Measurement> {
        let mut reference = self.reference.borrow_mut();
        let Some(want) = reference.as_ref() else {
            *reference = Some(outputs);
            return Ok(());
        };
        for (got, want) in outputs.iter().zip(want) {
            let d = rel_l2(got, want);
            if d.is_nan() || d > self.tolerance {
                return Err(Measurement::Rejected(format!(
                    "its output differs from the default's by {d:.2e}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outputs_are_the_reference() {
        let check = ReferenceOutputs::new(1e-2);
        assert!(check.check(vec![vec![1.0, 2.0]]).is_ok());
        assert!(check.check(vec![vec![1.0, 2.001]]).is_ok());
        let Err(Measurement::Rejected(why)) = check.check(vec![vec![1.0, 3.0]]) else {
            panic!("a different output must be rejected")
        };
        assert!(why.contains("differs from the default's"), "{why}");
        assert!(check.check(vec![vec![f32::NAN, 2.0]]).is_err());
    }

    #[test]
    fn bench_failures_are_kept_once() {
        let failure = RefCell::new(None);
        assert_eq!(measured(Ok(Ok(3)), &failure).ok(), Some(3));
        let refused = measured::<i32>(Ok(Err("no".into())), &failure);
        assert!(matches!(refused, Err(Measurement::Rejected(w)) if w == "no"));
        assert!(failure.borrow().is_none());
        let first = RuntimeError::Device("first".into());
        let failed = measured::<i32>(Err(first), &failure);
        assert!(matches!(failed, Err(Measurement::Rejected(w)) if w == "the GPU failed"));
        let _ = measured::<i32>(Err(RuntimeError::Device("second".into())), &failure);
        assert!(format!("{:?}", failure.borrow()).contains("first"));
    }
}
