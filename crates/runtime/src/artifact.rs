//! Reading and validating an artifact directory, on the host.
//!
//! [`Artifact::load`] reads `manifest.json`, `schedule.json` and
//! `kernels.cu`, and refuses an artifact that this runtime cannot run as
//! written: another format version, files that do not hash to the manifest's
//! content hash, a schedule that fails [`Schedule::validate`], steps whose
//! operands run past their buffers (see `plan::check_step`), or weights
//! that do not name weight buffers. Nothing here needs a GPU.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fluxc_artifact::{content_hash, files, Buffer, Manifest, Region, Schedule, FORMAT_VERSION};

use crate::RuntimeError;

/// A validated artifact, in memory.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `schedule.json`.
    pub schedule: Schedule,
    /// `kernels.cu`.
    pub kernels: String,
}

impl Artifact {
    /// Reads and validates the artifact in `dir`.
    pub fn load(dir: &Path) -> Result<Artifact, RuntimeError> {
        let manifest_path = dir.join(files::MANIFEST);
        let manifest_bytes = read(&manifest_path)?;
        let manifest = parse_manifest(&manifest_path, &manifest_bytes)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(RuntimeError::FormatVersion {
                dir: dir.to_path_buf(),
                found: manifest.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let schedule_path = dir.join(files::SCHEDULE);
        let schedule_bytes = read(&schedule_path)?;
        let kernels_path = dir.join(files::KERNELS);
        let kernels_bytes = read(&kernels_path)?;
        let actual = content_hash(&schedule_bytes, &kernels_bytes);
        if actual != manifest.content_hash {
            return Err(RuntimeError::HashMismatch {
                dir: dir.to_path_buf(),
                recorded: manifest.content_hash.clone(),
                actual,
            });
        }
        let schedule: Schedule = serde_json::from_slice(&schedule_bytes).map_err(|source| {
            RuntimeError::ArtifactJson {
                path: schedule_path.clone(),
                what: "schedule",
                source,
            }
        })?;
        let kernels =
            String::from_utf8(kernels_bytes).map_err(|e| RuntimeError::InvalidArtifact {
                dir: dir.to_path_buf(),
                reason: format!("kernels.cu is not UTF-8: {e}"),
            })?;
        let artifact = Artifact {
            dir: dir.to_path_buf(),
            manifest,
            schedule,
            kernels,
        };
        artifact.validate()?;
        Ok(artifact)
    }

    /// The buffer `id`, if the schedule has it.
    pub fn buffer(&self, id: u32) -> Option<&Buffer> {
        self.schedule.buffers.get(id as usize)
    }

    /// Checks everything the runtime relies on beyond the format itself.
    fn validate(&self) -> Result<(), RuntimeError> {
        let fail = |reason: String| {
            Err(RuntimeError::InvalidArtifact {
                dir: self.dir.clone(),
                reason,
            })
        };
        if let Err(e) = self.schedule.validate() {
            return fail(e.to_string());
        }
        if self.kernels.contains('\0') {
            return fail("kernels.cu contains a NUL byte".into());
        }
        let mut seen = HashSet::new();
        for w in &self.manifest.weights {
            let Some(b) = self.buffer(w.buffer) else {
                return fail(format!(
                    "weight `{}` names missing buffer {}",
                    w.name, w.buffer
                ));
            };
            if b.region != Region::Weights {
                return fail(format!(
                    "weight `{}` names buffer {} `{}`, which is not in the weight region",
                    w.name, w.buffer, b.name
                ));
            }
            if !seen.insert(w.buffer) {
                return fail(format!(
                    "buffer {} `{}` is filled by two weights",
                    w.buffer, b.name
                ));
            }
        }
        for (i, step) in self.schedule.steps.iter().enumerate() {
            crate::plan::check_step(&self.schedule, i, step)?;
        }
        for binding in self.schedule.inputs.iter().chain(&self.schedule.outputs) {
            if let Some(b) = self.buffer(binding.buffer) {
                if b.region != Region::Arena {
                    return fail(format!(
                        "input/output `{}` is not in the arena",
                        binding.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::ArtifactIo {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, RuntimeError> {
    let err = |source| RuntimeError::ArtifactJson {
        path: path.to_path_buf(),
        what: "manifest",
        source,
    };
    // Read the version first, so an artifact of another version is reported
    // as such even when the rest of its manifest no longer parses.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(err)?;
    if let Some(found) = value.get("format_version").and_then(|v| v.as_u64()) {
        if found != u64::from(FORMAT_VERSION) {
            return Err(RuntimeError::FormatVersion {
                dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                expected: FORMAT_VERSION,
            });
        }
    }
    serde_json::from_value(value).map_err(err)
}
