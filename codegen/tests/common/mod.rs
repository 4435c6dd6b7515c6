//! NVRTC compile checks shared by codegen tests: generated CUDA must compile
//! for sm_90a. Needs `libnvrtc` on the loader path and the CUDA headers
//! (directory from `FLUXC_CUDA_INCLUDE`, default `/usr/local/cuda/include`);
//! where NVRTC is missing (CI has no CUDA) `nvrtc_available` says why and the
//! checks are skipped.

#![allow(dead_code)]

use std::ffi::CString;

use cudarc::nvrtc::{result, sys};

/// Why NVRTC cannot be used here, if it cannot.
pub fn nvrtc_unavailable() -> Option<String> {
    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { sys::is_culib_present() } {
        return Some("libnvrtc is not loadable (no CUDA toolkit on this machine)".into());
    }
    let dir = include_dir();
    if !std::path::Path::new(&dir).join("cuda_bf16.h").exists() {
        return Some(format!(
            "no cuda_bf16.h under {dir} (set FLUXC_CUDA_INCLUDE)"
        ));
    }
    None
}

/// The CUDA include directory for NVRTC.
pub fn include_dir() -> String {
    std::env::var("FLUXC_CUDA_INCLUDE").unwrap_or_else(|_| "/usr/local/cuda/include".to_string())
}

/// Compiles `src` to a CUBIN for sm_90a; returns the CUBIN and the program
/// log (which holds ptxas' register / spill report).
pub fn compile_cubin(
    src: &str,
    name: &str,
    include_dir: &str,
) -> Result<(Vec<u8>, String), String> {
    let src_c = CString::new(src).map_err(|e| e.to_string())?;
    let name_c = CString::new(format!("{name}.cu")).map_err(|e| e.to_string())?;
    let prog = result::create_program(&src_c, Some(&name_c)).map_err(|e| e.to_string())?;
    let options = [
        "--gpu-architecture=sm_90a".to_string(),
        "-std=c++17".to_string(),
        format!("--include-path={include_dir}"),
        "--ptxas-options=-v".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed exactly once below;
    // `src_c` and `name_c` outlive it.
    unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        let out = match compiled {
            Err(e) => Err(format!("NVRTC compile of {name} failed: {e}\n{log}")),
            Ok(()) => {
                let mut size = 0usize;
                let mut cubin = Vec::new();
                let r = sys::nvrtcGetCUBINSize(prog, &mut size).result();
                if r.is_ok() && size > 0 {
                    cubin = vec![0u8; size];
                    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                        .result()
                        .map_err(|e| e.to_string())?;
                }
                Ok((cubin, log))
            }
        };
        result::destroy_program(prog).map_err(|e| e.to_string())?;
        out
    }
}
