//! What `fluxc compile` tunes with: the model.toml's `[autotune]`, with
//! every key overridden by its command-line flag where one is given.
//!
//! The cache is `--tuning-cache`, else `[autotune] cache` (relative to the
//! model.toml's directory), else, with `--tune` only, `./tuning.json`.

use std::path::{Path, PathBuf};

use fluxc_autotune::{BadBudget, Budget, SearchOptions};
use fluxc_models::config::AutotuneConfig;

/// The tuning flags of `fluxc compile` (each `None` when not given).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TuneFlags<'a> {
    /// `--tune`.
    pub tune: bool,
    /// `--tuning-cache FILE`.
    pub cache: Option<&'a Path>,
    /// `--tune-budget SECONDS`.
    pub budget_s: Option<f64>,
    /// `--coordinate-descent true|false`.
    pub coordinate_descent: Option<bool>,
    /// `--check-all-directions true|false`.
    pub check_all_directions: Option<bool>,
}

/// The settings a compile tunes with.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneSettings {
    /// Measure on the GPU (`--tune`).
    pub tune: bool,
    /// Search (`false`: the cache's records and the defaults only).
    pub coordinate_descent: bool,
    /// Try the combined neighbourhood after single-field descent.
    pub check_all_directions: bool,
    /// Wall-clock seconds tuning may take.
    pub budget_s: f64,
    /// The tuning cache, if any.
    pub cache: Option<PathBuf>,
    /// Where each setting came from, for messages (`--tune-budget`,
    /// `[autotune] budget_s`).
    pub budget_from: &'static str,
}

/// The cache `--tune` writes when neither the flag nor the file names one.
pub const DEFAULT_CACHE: &str = "tuning.json";

impl TuneSettings {
    /// `file` (the `[autotune]` of the model.toml at `model`) overridden
    /// by `flags`. A budget flag that is not a positive, finite number of
    /// seconds is an error.
    pub fn resolve(
        file: &AutotuneConfig,
        model: &Path,
        flags: &TuneFlags,
    ) -> Result<TuneSettings, BadBudget> {
        if let Some(b) = flags.budget_s {
            Budget::start(b)?;
        }
        let cache = flags
            .cache
            .map(Path::to_path_buf)
            .or_else(|| file.cache_path(model))
            .or_else(|| flags.tune.then(|| PathBuf::from(DEFAULT_CACHE)));
        Ok(TuneSettings {
            tune: flags.tune,
            coordinate_descent: flags.coordinate_descent.unwrap_or(file.coordinate_descent),
            check_all_directions: flags
                .check_all_directions
                .unwrap_or(file.check_all_directions),
            budget_s: flags.budget_s.unwrap_or(file.budget_s),
            cache,
            budget_from: if flags.budget_s.is_some() {
                "--tune-budget"
            } else {
                "[autotune] budget_s"
            },
        })
    }

    /// Whether this compile measures on the GPU: `--tune` with the search on.
    pub fn measures(&self) -> bool {
        self.tune && self.coordinate_descent
    }

    /// The search options of every kernel's coordinate descent (the
    /// deadline is the budget's, set when tuning starts).
    pub fn search(&self) -> SearchOptions {
        SearchOptions {
            check_all_directions: self.check_all_directions,
            ..SearchOptions::default()
        }
    }

    /// The budget, started now.
    pub fn start_budget(&self) -> Result<Budget, BadBudget> {
        Budget::start(self.budget_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> AutotuneConfig {
        AutotuneConfig {
            coordinate_descent: false,
            check_all_directions: false,
            budget_s: 30.0,
            cache: Some(PathBuf::from("t/h200.json")),
        }
    }

    #[test]
    fn the_file_applies_where_no_flag_is_given() {
        let model = Path::new("/m/dev.toml");
        let s = TuneSettings::resolve(&file(), model, &TuneFlags::default()).unwrap();
        assert_eq!(
            s,
            TuneSettings {
                tune: false,
                coordinate_descent: false,
                check_all_directions: false,
                budget_s: 30.0,
                cache: Some(PathBuf::from("/m/t/h200.json")),
                budget_from: "[autotune] budget_s",
            }
        );
        assert!(!s.measures());
        assert!(!s.search().check_all_directions);
    }

    #[test]
    fn flags_override_the_file() {
        let flags = TuneFlags {
            tune: true,
            cache: Some(Path::new("mine.json")),
            budget_s: Some(5.5),
            coordinate_descent: Some(true),
            check_all_directions: Some(true),
        };
        let s = TuneSettings::resolve(&file(), Path::new("/m/dev.toml"), &flags).unwrap();
        assert_eq!(
            s.cache,
            Some(PathBuf::from("mine.json")),
            "a flag's path is the cwd's"
        );
        assert_eq!((s.budget_s, s.budget_from), (5.5, "--tune-budget"));
        assert!(s.measures() && s.search().check_all_directions);
        assert_eq!(s.start_budget().unwrap().limit().as_secs_f64(), 5.5);
    }

    #[test]
    fn tune_without_a_named_cache_writes_the_default_one() {
        let defaults = AutotuneConfig::default();
        let model = Path::new("models/tiny.toml");
        let plain = TuneSettings::resolve(&defaults, model, &TuneFlags::default()).unwrap();
        assert_eq!(plain.cache, None, "without --tune, no cache unless named");
        let tune = TuneFlags {
            tune: true,
            ..TuneFlags::default()
        };
        let s = TuneSettings::resolve(&defaults, model, &tune).unwrap();
        assert_eq!(s.cache, Some(PathBuf::from(DEFAULT_CACHE)));
        assert!(s.measures() && s.check_all_directions);
        assert_eq!(s.budget_s, 120.0);
    }

    #[test]
    fn bad_budget_flags_are_errors() {
        for bad in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            let flags = TuneFlags {
                budget_s: Some(bad),
                ..TuneFlags::default()
            };
            let err = TuneSettings::resolve(&file(), Path::new("m.toml"), &flags).unwrap_err();
            assert!(err.to_string().contains("positive, finite"), "{err}");
        }
    }
}
