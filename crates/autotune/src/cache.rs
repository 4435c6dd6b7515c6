//! Reading and writing the tuning cache (`tuning.json`).
//!
//! A missing file is an empty cache; a file that is not a tuning cache of
//! this version is an error naming it (never silently discarded: it may
//! hold hours of measurements). Writes go to a temporary file renamed into
//! place, so an interrupted write never corrupts the cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fluxc_artifact::{TuningCache, TUNING_FORMAT_VERSION};

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read or written.
    #[error("tuning cache `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not a tuning cache.
    #[error("tuning cache `{}` is not valid: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Loads the cache at `path` (empty when the file does not exist).
pub fn load(path: &Path) -> Result<TuningCache, CacheError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TuningCache::default()),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let cache: TuningCache = serde_json::from_str(&text).map_err(|e| CacheError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if cache.format_version != TUNING_FORMAT_VERSION {
        return Err(CacheError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "format version {} (this fluxc reads {TUNING_FORMAT_VERSION})",
                cache.format_version
            ),
        });
    }
    Ok(cache)
}

/// Saves `cache` to `path` atomically.
pub fn save(path: &Path, cache: &TuningCache) -> Result<(), CacheError> {
    let io_err = |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(cache).map_err(|e| CacheError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })? + "\n";
    let temp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    fs::write(&temp, text).map_err(io_err)?;
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_artifact::{tuning_key, TuningRecord};
    use std::collections::BTreeMap;

    #[test]
    fn missing_is_empty_and_saves_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tuning.json");
        assert_eq!(load(&path).unwrap(), TuningCache::default());
        let mut cache = TuningCache::default();
        cache.entries.insert(
            tuning_key("h", "s", "d", "v"),
            TuningRecord {
                name: "k".into(),
                config: BTreeMap::from([("threads".to_string(), 256)]),
                time_us: 1.0,
                default_time_us: 2.0,
                measurements: 3,
            },
        );
        save(&path, &cache).unwrap();
        assert_eq!(load(&path).unwrap(), cache);
        let leftovers = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn garbage_and_other_versions_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuning.json");
        fs::write(&path, "not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("tuning.json") && err.contains("not valid"),
            "{err}"
        );
        fs::write(&path, r#"{"format_version": 99, "entries": {}}"#).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }
}
