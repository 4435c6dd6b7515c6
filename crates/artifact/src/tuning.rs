//! `tuning.json`: measured best configurations, kept across compiles.
//!
//! An entry is keyed by what makes a measurement valid elsewhere: the
//! content hash of the kernel (or GEMM descriptor) being tuned, its shapes,
//! and the device and driver it was timed on. A compile on a machine with
//! the same key reuses the entry instead of timing again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the tuning-cache format.
pub const TUNING_FORMAT_VERSION: u32 = 1;

/// One tuned kernel or GEMM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningRecord {
    /// What was tuned, for reports (`k26_slice_gelu_tanh_concat_bf16`, `gemm 4352x21504x3072`).
    pub name: String,
    /// The chosen value of every field of its configuration space.
    pub config: BTreeMap<String, i64>,
    /// Its measured time, µs.
    pub time_us: f64,
    /// The default configuration's time, µs.
    pub default_time_us: f64,
    /// Configurations measured to find it.
    pub measurements: usize,
}

/// `tuning.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningCache {
    /// [`TUNING_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Records by [`tuning_key`].
    pub entries: BTreeMap<String, TuningRecord>,
}

impl Default for TuningCache {
    fn default() -> Self {
        TuningCache {
            format_version: TUNING_FORMAT_VERSION,
            entries: BTreeMap::new(),
        }
    }
}

impl TuningCache {
    /// The records measured for `content_hash` and `shape`, each with the
    /// `device|driver` it was measured on (the rest of its key).
    pub fn records_for<'c>(
        &'c self,
        content_hash: &str,
        shape: &str,
    ) -> impl Iterator<Item = (&'c str, &'c TuningRecord)> + 'c {
        let prefix = format!("{content_hash}|{shape}|");
        self.entries
            .range(prefix.clone()..)
            .map_while(move |(key, record)| Some((key.strip_prefix(&prefix)?, record)))
    }
}

/// The key of a measurement: `content_hash|shape|device|driver`.
pub fn tuning_key(content_hash: &str, shape: &str, device: &str, driver: &str) -> String {
    format!("{content_hash}|{shape}|{device}|{driver}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut cache = TuningCache::default();
        cache.entries.insert(
            tuning_key("ab12", "4352x3072", "NVIDIA H200", "580.159"),
            TuningRecord {
                name: "k28_layer_norm_bf16".into(),
                config: BTreeMap::from([("threads".to_string(), 128)]),
                time_us: 21.5,
                default_time_us: 24.0,
                measurements: 7,
            },
        );
        let found: Vec<&str> = cache
            .records_for("ab12", "4352x3072")
            .map(|(d, _)| d)
            .collect();
        assert_eq!(found, ["NVIDIA H200|580.159"]);
        assert_eq!(cache.records_for("ab12", "4352").count(), 0);
        let json = serde_json::to_string(&cache).unwrap();
        assert_eq!(serde_json::from_str::<TuningCache>(&json).unwrap(), cache);
        assert!(json.contains("ab12|4352x3072|NVIDIA H200|580.159"));
    }
}
