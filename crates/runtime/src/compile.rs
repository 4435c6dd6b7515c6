//! Compiling CUDA sources to CUBINs with NVRTC, and caching the result:
//! the artifact's `kernels.cu`, and the runtime's own `quantize.cu` (fp8
//! weight quantization at load time), each its own program and module.
//!
//! The CUBIN is compiled for the artifact's architecture (`sm_90a`) with
//! `--gpu-architecture=<arch> -std=c++17 --include-path=<dir>...` (NVRTC 13
//! has no built-in CUDA headers, so the include directories must hold
//! `cuda_bf16.h` and CCCL). Compiled CUBINs are cached as
//! `<cache_dir>/<key>.cubin`, where the key is the SHA-256 of the source,
//! the architecture, the options, the driver version and the NVRTC version.
//! A cache that cannot be read or written is skipped with a warning.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use fluxc_artifact::hash_parts;

use crate::RuntimeError;

/// NVRTC's options for compiling to `arch` with headers from `include_dirs`.
pub fn nvrtc_options(arch: &str, include_dirs: &[PathBuf]) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
    ];
    for dir in include_dirs {
        options.push(format!("--include-path={}", dir.display()));
    }
    options
}

/// The NVRTC version, `(major, minor)`. Needs libnvrtc (check
/// [`check_libraries`](crate::cuda::check_libraries) first).
pub fn nvrtc_version() -> Result<(i32, i32), RuntimeError> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both pointers are valid for writes.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(RuntimeError::nvrtc("querying the NVRTC version"))?;
    Ok((major, minor))
}

/// The cache key of a CUBIN: SHA-256 (hex) over the source, the
/// architecture, the options, the driver version and the NVRTC version.
pub fn cache_key(
    source: &str,
    arch: &str,
    options: &[String],
    driver_version: i32,
    nvrtc_version: (i32, i32),
) -> String {
    let versions = [driver_version, nvrtc_version.0, nvrtc_version.1].map(i32::to_le_bytes);
    let head = [
        b"fluxc-cubin-1".as_slice(),
        source.as_bytes(),
        arch.as_bytes(),
    ];
    let options = options.iter().map(|o| o.as_bytes());
    hash_parts(
        head.into_iter()
            .chain(options)
            .chain(versions.iter().map(|v| v.as_slice())),
    )
}

/// Compiles `source` (the artifact's `kernels.cu`) to a CUBIN for `arch`
/// (an `sm_*` architecture) with `options` (see [`nvrtc_options`]). Returns
/// the CUBIN and NVRTC's log (warnings); a compile error is
/// [`RuntimeError::Compile`] with the log.
pub fn compile_cubin(
    source: &str,
    arch: &str,
    options: &[String],
) -> Result<(Vec<u8>, String), RuntimeError> {
    compile_named(KERNELS_FILE, source, arch, options)
}

/// The file name NVRTC and errors give the artifact's kernels.
pub const KERNELS_FILE: &str = "kernels.cu";

/// [`compile_cubin`] for a source named `name` in NVRTC's diagnostics and
/// in errors.
pub fn compile_named(
    name: &str,
    source: &str,
    arch: &str,
    options: &[String],
) -> Result<(Vec<u8>, String), RuntimeError> {
    if !arch.starts_with("sm_") {
        return Err(RuntimeError::Unsupported(format!(
            "architecture `{arch}`: a CUBIN needs a real architecture (sm_*)"
        )));
    }
    let src = CString::new(source)
        .map_err(|_| RuntimeError::Unsupported(format!("{name} contains a NUL byte")))?;
    if options.iter().any(|o| o.contains('\0')) {
        return Err(RuntimeError::Unsupported(
            "an NVRTC option contains a NUL byte".into(),
        ));
    }
    let file = CString::new(name)
        .map_err(|_| RuntimeError::Unsupported("a source name contains a NUL byte".into()))?;
    let prog = nvrtc::create_program(&src, Some(&file))
        .map_err(RuntimeError::nvrtc("creating the NVRTC program"))?;
    // SAFETY: `prog` was created above and is destroyed exactly once, below;
    // `src` and `file` outlive it. Options hold no NUL (checked above), so
    // `compile_program`'s CString conversion cannot panic.
    let result = unsafe {
        let compiled = nvrtc::compile_program(prog, options);
        let log = nvrtc::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let out = match compiled {
            Err(e) if e.0 == nvrtc_sys::nvrtcResult::NVRTC_ERROR_COMPILATION => {
                Err(RuntimeError::Compile {
                    file: name.to_string(),
                    arch: arch.to_string(),
                    options: options.join(" "),
                    log,
                })
            }
            Err(e) => Err(RuntimeError::nvrtc(format!("compiling {name}"))(e)),
            Ok(()) => get_cubin(prog).map(|cubin| (cubin, log)),
        };
        let _ = nvrtc::destroy_program(prog);
        out
    };
    let (cubin, log) = result?;
    if cubin.is_empty() {
        return Err(RuntimeError::Unsupported(format!(
            "NVRTC produced an empty CUBIN for `{arch}`"
        )));
    }
    Ok((cubin, log))
}

/// The CUBIN of a compiled program.
///
/// # Safety
/// `prog` must be a compiled, live NVRTC program.
unsafe fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, RuntimeError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(RuntimeError::nvrtc("getting the CUBIN size"))?;
    let mut cubin = vec![0u8; size];
    if size > 0 {
        nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast::<c_char>())
            .result()
            .map_err(RuntimeError::nvrtc("getting the CUBIN"))?;
    }
    Ok(cubin)
}

/// A NUL-terminated C string in a `c_char` buffer, lossily as UTF-8.
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// Where a CUBIN came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CubinOrigin {
    /// Read from this cache file.
    Cache(PathBuf),
    /// Compiled now (and written to the cache file, if any).
    Compiled(Option<PathBuf>),
}

/// The CUBIN for `source` (the artifact's `kernels.cu`): from `cache_dir`
/// when a CUBIN with the same key is there, else compiled with NVRTC and
/// written there. `warn` receives cache problems and compiler warnings.
pub fn cached_cubin(
    source: &str,
    arch: &str,
    options: &[String],
    driver_version: i32,
    cache_dir: Option<&Path>,
    warn: impl FnMut(&str),
) -> Result<(Vec<u8>, CubinOrigin), RuntimeError> {
    cached_named(
        KERNELS_FILE,
        source,
        arch,
        options,
        driver_version,
        cache_dir,
        warn,
    )
}

/// [`cached_cubin`] for a source named `name` in diagnostics and errors.
/// The key covers the source, not its name: equal sources share a CUBIN.
pub fn cached_named(
    name: &str,
    source: &str,
    arch: &str,
    options: &[String],
    driver_version: i32,
    cache_dir: Option<&Path>,
    mut warn: impl FnMut(&str),
) -> Result<(Vec<u8>, CubinOrigin), RuntimeError> {
    let key = cache_key(source, arch, options, driver_version, nvrtc_version()?);
    let file = cache_dir.map(|d| d.join(format!("{key}.cubin")));
    if let Some(file) = &file {
        match std::fs::read(file) {
            Ok(bytes) if !bytes.is_empty() => return Ok((bytes, CubinOrigin::Cache(file.clone()))),
            Ok(_) => warn(&format!("ignoring empty cached CUBIN `{}`", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn(&format!(
                "cannot read cached CUBIN `{}`: {e}",
                file.display()
            )),
        }
    }
    let (cubin, log) = compile_named(name, source, arch, options)?;
    if !log.is_empty() {
        warn(&format!("NVRTC warnings for {name}:\n{log}"));
    }
    let written = file.and_then(|f| match write_atomically(&f, &cubin) {
        Ok(()) => Some(f),
        Err(e) => {
            warn(&format!("cannot cache the CUBIN at `{}`: {e}", f.display()));
            None
        }
    });
    Ok((cubin, CubinOrigin::Compiled(written)))
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// so readers never see a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cubin"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_arch_standard_and_includes() {
        let o = nvrtc_options("sm_90a", &[PathBuf::from("/i"), PathBuf::from("/j/cccl")]);
        assert_eq!(
            o,
            vec![
                "--gpu-architecture=sm_90a",
                "-std=c++17",
                "--include-path=/i",
                "--include-path=/j/cccl"
            ]
        );
    }

    #[test]
    fn cache_keys_change_with_every_input() {
        let o = nvrtc_options("sm_90a", &[]);
        let k = cache_key("src", "sm_90a", &o, 13000, (13, 0));
        assert_eq!(k.len(), 64);
        assert_eq!(k, cache_key("src", "sm_90a", &o, 13000, (13, 0)));
        assert_ne!(k, cache_key("src2", "sm_90a", &o, 13000, (13, 0)));
        assert_ne!(k, cache_key("src", "sm_90", &o, 13000, (13, 0)));
        assert_ne!(k, cache_key("src", "sm_90a", &o, 13010, (13, 0)));
        assert_ne!(k, cache_key("src", "sm_90a", &o, 13000, (13, 1)));
        let o2 = nvrtc_options("sm_90a", &[PathBuf::from("/x")]);
        assert_ne!(k, cache_key("src", "sm_90a", &o2, 13000, (13, 0)));
    }

    /// The key's bytes are length-prefixed parts (the tag, source, arch,
    /// each option, then the driver and NVRTC versions as little-endian
    /// i32s): pinned, so that a change of how it is computed does not
    /// silently orphan the kernels already cached on disk.
    #[test]
    fn cache_keys_are_stable() {
        let options = ["-a".to_string(), "-b".to_string()];
        assert_eq!(
            cache_key("src", "sm_90a", &options, 12040, (13, 0)),
            "4f318a6e71e860f8902307424ce481d3df2ab0f1cfa97108e1e584b371b187d7"
        );
    }

    #[test]
    fn atomic_writes_replace_files() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("sub/k.cubin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
