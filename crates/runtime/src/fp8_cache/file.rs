//! The cache file itself: a safetensors file with one tensor per
//! device-quantized weight (named as the weight, its buffer's dtype and
//! shape), and in its `__metadata__` the [`Stamp`] and an xxh3-64 checksum
//! of every tensor's bytes.
//!
//! [`write`](fn@write) streams the tensors into a temporary file next to the target
//! and renames it into place only when everything was written and synced,
//! so an error never leaves a half-written cache under the real name.
//! [`open`] checks the header (the `safetensors` crate rejects truncated
//! files), the stamp, and every tensor's dtype and shape;
//! [`CachedWeights::bytes`] checks a tensor's checksum before handing out
//! its bytes, so a corrupt cache is never uploaded as weights.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fluxc_artifact::ElemType;
use fluxc_checkpoint::{row_layout, Dtype, SafetensorsFile};
use serde_json::{json, Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::stamp::{FileId, Stamp};
use crate::weights::Fp8Weight;
use crate::RuntimeError;

/// Metadata keys.
const KEY_FORMAT: &str = "fluxc.format";
const KEY_ARTIFACT_FORMAT: &str = "fluxc.artifact_format";
const KEY_CONTENT_HASH: &str = "fluxc.artifact_content_hash";
const KEY_WEIGHTS_HASH: &str = "fluxc.weights_hash";
const KEY_CHECKPOINT: &str = "fluxc.checkpoint";
const KEY_CHECKSUMS: &str = "fluxc.checksums";

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// The weight's name.
    pub name: String,
    /// Its buffer's dtype (fp8 values or f32 scales).
    pub dtype: ElemType,
    /// Its buffer's shape.
    pub shape: Vec<u64>,
    /// Its buffer's size in bytes.
    pub bytes: u64,
}

impl Tensor {
    /// The tensors of `weights`, in order.
    pub fn of(weights: &[Fp8Weight<'_>]) -> Vec<Tensor> {
        weights
            .iter()
            .map(|w| Tensor {
                name: w.name.to_string(),
                dtype: w.buffer.dtype,
                shape: w.buffer.shape.clone(),
                bytes: w.buffer.bytes,
            })
            .collect()
    }
}

/// The safetensors dtype of a buffer dtype the cache holds.
fn stored_dtype(dtype: ElemType) -> Option<(Dtype, &'static str)> {
    match dtype {
        ElemType::F8e4m3 => Some((Dtype::F8_E4M3, "F8_E4M3")),
        ElemType::F8e5m2 => Some((Dtype::F8_E5M2, "F8_E5M2")),
        ElemType::F32 => Some((Dtype::F32, "F32")),
        _ => None,
    }
}

fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxh3_64(bytes))
}

/// The header: metadata first, then every tensor at its offset, padded
/// with spaces to a multiple of 8 bytes.
fn header(
    stamp: &Stamp,
    tensors: &[Tensor],
    checksums: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut metadata = Map::new();
    let text = |v: String| Value::String(v);
    metadata.insert(KEY_FORMAT.into(), text(stamp.format.clone()));
    metadata.insert(
        KEY_ARTIFACT_FORMAT.into(),
        text(stamp.artifact_format.to_string()),
    );
    metadata.insert(
        KEY_CONTENT_HASH.into(),
        text(stamp.artifact_content_hash.clone()),
    );
    metadata.insert(KEY_WEIGHTS_HASH.into(), text(stamp.weights_hash.clone()));
    metadata.insert(KEY_CHECKPOINT.into(), text(json_text(&stamp.checkpoint)));
    metadata.insert(KEY_CHECKSUMS.into(), text(json_text(checksums)));
    let mut root = Map::new();
    root.insert("__metadata__".into(), Value::Object(metadata));
    let mut offset = 0u64;
    for t in tensors {
        let (_, dtype) = stored_dtype(t.dtype)
            .ok_or_else(|| format!("weight `{}` is {:?}, not fp8 or f32", t.name, t.dtype))?;
        let end = offset + t.bytes;
        let entry = json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [offset, end] });
        if root.insert(t.name.clone(), entry).is_some() {
            return Err(format!("weight `{}` is listed twice", t.name));
        }
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(root)).map_err(|e| e.to_string())?;
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

/// JSON text of a metadata value that is itself JSON.
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A [`RuntimeError::QuantizedCache`] about `path`.
fn cache_error(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::QuantizedCache {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes the cache at `path`: `fill(i, buf)` puts the bytes of
/// `tensors[i]` into the (cleared) `buf`. Written to a temporary file in the
/// same directory and renamed into place; on any error the temporary file
/// is removed and `path` is left as it was.
pub fn write(
    path: &Path,
    stamp: &Stamp,
    tensors: &[Tensor],
    mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let name = path
        .file_name()
        .ok_or_else(|| cache_error(path, "the path names no file"))?;
    let temp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let io = |what: &str, e: std::io::Error| cache_error(path, format!("cannot {what}: {e}"));
    // Placeholder checksums of the final width keep the header's length.
    let placeholders: BTreeMap<String, String> = tensors
        .iter()
        .map(|t| (t.name.clone(), "0".repeat(16)))
        .collect();
    let head = header(stamp, tensors, &placeholders).map_err(|e| cache_error(path, e))?;
    let result = (|| -> Result<(), RuntimeError> {
        let file =
            File::create(&temp).map_err(|e| io(&format!("create `{}`", temp.display()), e))?;
        let mut out = BufWriter::with_capacity(1 << 22, file);
        let write_err = |e| io(&format!("write `{}`", temp.display()), e);
        out.write_all(&(head.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&head))
            .map_err(write_err)?;
        let mut checksums = BTreeMap::new();
        let mut buf = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            buf.clear();
            fill(i, &mut buf)?;
            if buf.len() as u64 != t.bytes {
                return Err(cache_error(
                    path,
                    format!(
                        "weight `{}` gave {} bytes, its buffer holds {}",
                        t.name,
                        buf.len(),
                        t.bytes
                    ),
                ));
            }
            checksums.insert(t.name.clone(), checksum(&buf));
            out.write_all(&buf).map_err(write_err)?;
        }
        let last = header(stamp, tensors, &checksums).map_err(|e| cache_error(path, e))?;
        if last.len() != head.len() {
            return Err(cache_error(path, "the header changed size while writing"));
        }
        let mut file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.seek(SeekFrom::Start(8))
            .and_then(|_| file.write_all(&last))
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        fs::rename(&temp, path)
            .map_err(|e| io(&format!("rename `{}` into place", temp.display()), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// What [`open`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A cache of these weights, quantized from this checkpoint.
    Valid(CachedWeights),
    /// No file.
    Missing,
    /// A cache of other weights or another checkpoint: why, in words.
    Stale(String),
    /// A file that is not a usable cache: why, in words.
    Corrupt(String),
}

/// An opened cache whose stamp matches (see [`open`]).
#[derive(Debug)]
pub struct CachedWeights {
    file: SafetensorsFile,
    checksums: BTreeMap<String, String>,
}

impl CachedWeights {
    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The bytes of weight `name`, once they match their checksum.
    pub fn bytes(&self, name: &str) -> Result<&[u8], RuntimeError> {
        let corrupt = |why: String| cache_error(self.path(), why);
        let info = self
            .file
            .info(name)
            .ok_or_else(|| corrupt(format!("it has no tensor `{name}`")))?;
        let (rows, _) = row_layout(&info.shape);
        let (_, bytes) = self
            .file
            .raw_rows(name, 0..rows)
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt(format!("tensor `{name}` cannot be read")))?;
        let want = self.checksums.get(name).map(String::as_str).unwrap_or("");
        let got = checksum(bytes);
        if got != want {
            return Err(corrupt(format!(
                "tensor `{name}` has checksum {got}, its header records {want} (the file is corrupt)"
            )));
        }
        Ok(bytes)
    }
}

/// The stamp and checksums a file's metadata records (`Err(Ok(format))`:
/// another format, whose other keys are not read; `Err(Err(why))`: no
/// readable stamp).
type Recorded = Result<(Stamp, BTreeMap<String, String>), Result<String, String>>;

fn recorded(file: &SafetensorsFile) -> Recorded {
    let meta = file
        .user_metadata()
        .filter(|m| m.contains_key(KEY_FORMAT))
        .ok_or_else(|| Err("it has no fluxc metadata (not written by fluxc)".to_string()))?;
    if meta[KEY_FORMAT] != super::stamp::FORMAT {
        return Err(Ok(meta[KEY_FORMAT].clone()));
    }
    read_fields(meta).map_err(Err)
}

fn read_fields(
    meta: &std::collections::HashMap<String, String>,
) -> Result<(Stamp, BTreeMap<String, String>), String> {
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let artifact_format = get(KEY_ARTIFACT_FORMAT)?
        .parse::<u32>()
        .map_err(|e| format!("`{KEY_ARTIFACT_FORMAT}`: {e}"))?;
    let checkpoint: Vec<FileId> = serde_json::from_str(get(KEY_CHECKPOINT)?)
        .map_err(|e| format!("`{KEY_CHECKPOINT}`: {e}"))?;
    let checksums =
        serde_json::from_str(get(KEY_CHECKSUMS)?).map_err(|e| format!("`{KEY_CHECKSUMS}`: {e}"))?;
    let stamp = Stamp {
        format: get(KEY_FORMAT)?.clone(),
        artifact_format,
        artifact_content_hash: get(KEY_CONTENT_HASH)?.clone(),
        weights_hash: get(KEY_WEIGHTS_HASH)?.clone(),
        checkpoint,
    };
    Ok((stamp, checksums))
}

/// Opens the cache at `path` for weights stamped `stamp` that are
/// `tensors`: [`Lookup::Valid`] only when the stamps match and every tensor
/// is there, exactly, with the expected dtype, shape and a checksum.
pub fn open(path: &Path, stamp: &Stamp, tensors: &[Tensor]) -> Lookup {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(e) => return Lookup::Corrupt(e.to_string()),
        Ok(_) => {}
    }
    let file = match SafetensorsFile::open(path) {
        Ok(file) => file,
        Err(e) => return Lookup::Corrupt(e.to_string()),
    };
    let (found, checksums) = match recorded(&file) {
        Ok(r) => r,
        Err(Ok(format)) => {
            return Lookup::Stale(format!(
                "it has format `{format}`, this runtime reads `{}`",
                stamp.format
            ))
        }
        Err(Err(why)) => return Lookup::Corrupt(why),
    };
    if let Some(why) = stamp.mismatch(&found) {
        return Lookup::Stale(why);
    }
    for t in tensors {
        let Some(info) = file.info(&t.name) else {
            return Lookup::Corrupt(format!("it lacks weight `{}`", t.name));
        };
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let dtype = stored_dtype(t.dtype).map(|(d, _)| d);
        if Some(info.dtype) != dtype || shape != t.shape {
            return Lookup::Corrupt(format!(
                "weight `{}` is {} {:?} there, the artifact has {:?} {:?}",
                t.name, info.dtype, shape, t.dtype, t.shape
            ));
        }
        if !checksums.contains_key(&t.name) {
            return Lookup::Corrupt(format!("no checksum of weight `{}`", t.name));
        }
    }
    let stored = file.names().len();
    if stored != tensors.len() {
        return Lookup::Corrupt(format!(
            "it holds {stored} tensors, the artifact quantizes {}",
            tensors.len()
        ));
    }
    Lookup::Valid(CachedWeights { file, checksums })
}

/// The path of the cache in `artifact_dir`.
pub fn path_in(artifact_dir: &Path) -> PathBuf {
    artifact_dir.join(super::FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp8_cache::stamp::FORMAT;

    fn stamp() -> Stamp {
        Stamp {
            format: FORMAT.into(),
            artifact_format: 2,
            artifact_content_hash: "c0ffee".into(),
            weights_hash: "w".repeat(64),
            checkpoint: vec![FileId {
                path: "/ckpt/model.safetensors".into(),
                bytes: 1234,
                modified_ns: 1_700_000_000_123_456_789,
            }],
        }
    }

    fn tensors() -> Vec<Tensor> {
        vec![
            Tensor {
                name: "blocks.0.{to_q,to_k,to_v}.weight".into(),
                dtype: ElemType::F8e4m3,
                shape: vec![3, 4],
                bytes: 12,
            },
            Tensor {
                name: "blocks.0.{to_q,to_k,to_v}.weight.scale".into(),
                dtype: ElemType::F32,
                shape: vec![3, 1],
                bytes: 12,
            },
            Tensor {
                name: "e5".into(),
                dtype: ElemType::F8e5m2,
                shape: vec![5],
                bytes: 5,
            },
        ]
    }

    fn data(i: usize, t: &Tensor) -> Vec<u8> {
        (0..t.bytes)
            .map(|b| (b as u8).wrapping_mul(7) ^ i as u8)
            .collect()
    }

    fn write_ok(path: &Path) {
        let ts = tensors();
        write(path, &stamp(), &ts, |i, buf| {
            buf.extend(data(i, &ts[i]));
            Ok(())
        })
        .unwrap();
    }

    fn valid(path: &Path) -> CachedWeights {
        match open(path, &stamp(), &tensors()) {
            Lookup::Valid(w) => w,
            other => panic!("expected a valid cache, got {other:?}"),
        }
    }

    #[test]
    fn writes_and_reads_back_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write_ok(&path);
        let cached = valid(&path);
        for (i, t) in tensors().iter().enumerate() {
            assert_eq!(cached.bytes(&t.name).unwrap(), data(i, t), "{}", t.name);
        }
        // A plain safetensors file: other readers see the tensors and the stamp.
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.info("e5").unwrap().dtype, Dtype::F8_E5M2);
        let meta = file.user_metadata().unwrap();
        assert_eq!(meta[KEY_FORMAT], FORMAT);
        assert!(meta[KEY_CHECKPOINT].contains("1700000000123456789"));
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left");
    }

    #[test]
    fn another_stamp_is_stale_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write_ok(&path);
        let mut touched = stamp();
        touched.checkpoint[0].modified_ns += 1;
        match open(&path, &touched, &tensors()) {
            Lookup::Stale(why) => assert!(why.contains("was modified"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut newer = stamp();
        newer.format = "fluxc-fp8-weights/2".into();
        match open(&path, &newer, &tensors()) {
            Lookup::Stale(why) => assert!(why.contains("format `fluxc-fp8-weights/1`"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open(&dir.path().join("none"), &stamp(), &tensors()),
            Lookup::Missing
        ));
    }

    #[test]
    fn corrupt_files_are_never_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write_ok(&path);
        let good = fs::read(&path).unwrap();
        let corrupt = |bytes: &[u8], needle: &str| {
            fs::write(&path, bytes).unwrap();
            match open(&path, &stamp(), &tensors()) {
                Lookup::Corrupt(why) => assert!(why.contains(needle), "{needle}: {why}"),
                other => panic!("{needle}: {other:?}"),
            }
        };
        corrupt(&good[..good.len() - 3], "");
        corrupt(b"garbage", "");
        corrupt(&[], "");
        // Another tensor set than the artifact quantizes.
        let mut fewer = tensors();
        fewer.pop();
        fs::write(&path, &good).unwrap();
        match open(&path, &stamp(), &fewer) {
            Lookup::Corrupt(why) => assert!(why.contains("holds 3 tensors"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut reshaped = tensors();
        reshaped[0].shape = vec![4, 3];
        match open(&path, &stamp(), &reshaped) {
            Lookup::Corrupt(why) => assert!(why.contains("[3, 4]"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A flipped data bit opens, but its tensor is refused.
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let cached = valid(&path);
        let err = cached.bytes("e5").unwrap_err().to_string();
        assert!(
            err.contains("weights.fp8.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        assert!(cached.bytes("blocks.0.{to_q,to_k,to_v}.weight").is_ok());
        // Safetensors without fluxc's stamp.
        let plain = header_without_stamp();
        fs::write(&path, plain).unwrap();
        match open(&path, &stamp(), &tensors()) {
            Lookup::Corrupt(why) => assert!(why.contains("no fluxc metadata"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A valid safetensors file of one F32 tensor and no metadata.
    fn header_without_stamp() -> Vec<u8> {
        let head = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut out = (head.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(head);
        out.extend_from_slice(&1f32.to_le_bytes());
        out
    }

    #[test]
    fn failed_writes_leave_nothing_behind_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write_ok(&path);
        let before = fs::read(&path).unwrap();
        // The source fails half-way: the old cache stays, no temporary file.
        let err = write(&path, &stamp(), &tensors(), |i, buf| {
            if i == 1 {
                return Err(RuntimeError::Device("the GPU fell off".into()));
            }
            buf.extend([0; 12]);
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("fell off"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A wrong size is refused before anything is renamed.
        let err = write(&path, &stamp(), &tensors(), |_, buf| {
            buf.push(1);
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("gave 1 bytes, its buffer holds 12"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that does not exist (or cannot be written).
        let nowhere = dir.path().join("missing/weights.fp8.safetensors");
        let err = write(&nowhere, &stamp(), &tensors(), |_, _| Ok(())).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, RuntimeError::QuantizedCache { .. })
                && text.contains("missing/weights.fp8.safetensors")
                && text.contains("cannot create"),
            "{text}"
        );
    }
}
