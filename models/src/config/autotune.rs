//! `[autotune]`: how `fluxc compile --tune` searches, for how long, and
//! where its measurements are kept.
//!
//! Every key is optional. `coordinate_descent = false` turns the search off
//! (what the tuning cache holds still applies; everything else keeps the
//! heuristic defaults), `check_all_directions` adds the combined
//! neighbourhood after single-field descent converges, `budget_s` bounds
//! the wall time of tuning (what is left when it runs out keeps its
//! defaults), and `cache` names the tuning cache, relative to the
//! model.toml's directory. Command-line flags override every key
//! (`fluxc compile --help`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Violation;

/// The default of `budget_s`, seconds (the full FLUX.1 transformer tunes
/// from an empty cache in about 76 s on an H200).
pub const DEFAULT_BUDGET_S: f64 = 120.0;

/// `[autotune]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutotuneConfig {
    /// Search at all: `false` takes the heuristic defaults (the generated
    /// kernels' default launches, cuBLASLt's first algorithm) for whatever
    /// the tuning cache does not hold, measuring nothing.
    pub coordinate_descent: bool,
    /// After single-field descent converges, also try every configuration
    /// one step away along several fields at once.
    pub check_all_directions: bool,
    /// Wall-clock budget of tuning, seconds (positive).
    pub budget_s: f64,
    /// The tuning cache (`tuning.json`); a relative path is taken from the
    /// model.toml's directory ([`AutotuneConfig::cache_path`]).
    pub cache: Option<PathBuf>,
}

impl Default for AutotuneConfig {
    fn default() -> Self {
        AutotuneConfig {
            coordinate_descent: true,
            check_all_directions: true,
            budget_s: DEFAULT_BUDGET_S,
            cache: None,
        }
    }
}

impl AutotuneConfig {
    /// `cache`, with a relative path resolved against the directory of
    /// `model_file` (the model.toml it was read from).
    pub fn cache_path(&self, model_file: &Path) -> Option<PathBuf> {
        let cache = self.cache.as_ref()?;
        if cache.is_absolute() {
            return Some(cache.clone());
        }
        let dir = model_file.parent().unwrap_or(Path::new(""));
        Some(dir.join(cache))
    }
}

/// The rules serde cannot express: a positive, finite budget and a
/// non-empty cache path.
pub(super) fn validate(a: &AutotuneConfig) -> Result<(), Violation> {
    if !(a.budget_s.is_finite() && a.budget_s > 0.0) {
        return Err(Violation::new(
            "autotune.budget_s",
            format!(
                "must be a positive, finite number of seconds, got {}",
                a.budget_s
            ),
        ));
    }
    if a.cache.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
        return Err(Violation::new(
            "autotune.cache",
            "must not be empty (leave the key out for no cache)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_caches_resolve_against_the_model_file() {
        let with = |cache: &str| AutotuneConfig {
            cache: Some(PathBuf::from(cache)),
            ..AutotuneConfig::default()
        };
        let model = Path::new("/models/flux/dev.toml");
        assert_eq!(
            with("tuning.json").cache_path(model),
            Some(PathBuf::from("/models/flux/tuning.json"))
        );
        assert_eq!(
            with("../t/tuning.json").cache_path(model),
            Some(PathBuf::from("/models/flux/../t/tuning.json"))
        );
        assert_eq!(
            with("/abs/tuning.json").cache_path(model),
            Some(PathBuf::from("/abs/tuning.json"))
        );
        assert_eq!(
            with("t.json").cache_path(Path::new("dev.toml")),
            Some(PathBuf::from("t.json"))
        );
        assert_eq!(AutotuneConfig::default().cache_path(model), None);
    }

    #[test]
    fn budgets_must_be_positive_and_finite() {
        let budget = |budget_s| AutotuneConfig {
            budget_s,
            ..AutotuneConfig::default()
        };
        assert!(validate(&budget(0.5)).is_ok());
        for bad in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            let v = validate(&budget(bad)).unwrap_err();
            assert_eq!(v.field, "autotune.budget_s", "{bad}");
        }
        let empty = AutotuneConfig {
            cache: Some(PathBuf::new()),
            ..AutotuneConfig::default()
        };
        assert_eq!(validate(&empty).unwrap_err().field, "autotune.cache");
    }
}
