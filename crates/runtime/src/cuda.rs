//! The CUDA driver side: finding the libraries, checking the device, and
//! small RAII owners of raw driver handles (device memory, the kernel
//! module, the instantiated graph). Drops ignore errors and never panic.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublasLt` at run time and
//! panics on the first call into a library it cannot load, so
//! [`check_libraries`] must pass before anything else touches CUDA.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::CudaContext;

use crate::RuntimeError;

/// Fails with [`RuntimeError::NoCuda`], naming every library that cannot be
/// loaded (the CUDA driver, NVRTC, and cuBLASLt when `cublaslt`) and the
/// file names tried.
pub fn check_libraries(cublaslt: bool) -> Result<(), RuntimeError> {
    // SAFETY: each only tries to dlopen the library (and closes it again).
    let present = unsafe {
        [
            (
                "the CUDA driver library",
                "cuda",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("NVRTC", "nvrtc", cudarc::nvrtc::sys::is_culib_present()),
            (
                "cuBLASLt",
                "cublasLt",
                !cublaslt || cudarc::cublaslt::sys::is_culib_present(),
            ),
        ]
    };
    let missing: Vec<String> = present
        .iter()
        .filter(|(_, _, found)| !found)
        .map(|(what, lib, _)| {
            // The names a Linux loader would find (cudarc also tries Windows-style ones).
            let mut tried: Vec<String> = cudarc::get_lib_name_candidates(lib)
                .into_iter()
                .filter(|n| n.starts_with(&format!("lib{lib}.so")))
                .collect();
            tried.dedup();
            if tried.is_empty() {
                tried = cudarc::get_lib_name_candidates(lib);
            }
            format!("{what} could not be loaded (tried {})", tried.join(", "))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(RuntimeError::NoCuda(format!(
        "{}; install the NVIDIA driver and the CUDA 13 libraries, or put the directories \
         holding them on LD_LIBRARY_PATH",
        missing.join("; ")
    )))
}

/// Whether the CUDA driver library (`libcuda`) can be loaded here.
pub fn driver_library_present() -> bool {
    // SAFETY: only tries to dlopen the library (and closes it again).
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Initializes the driver and fails with [`RuntimeError::NoCuda`] when it
/// finds no GPU, or [`RuntimeError::Device`] when `ordinal` is not one.
pub fn check_device(ordinal: usize) -> Result<(), RuntimeError> {
    let count = match CudaContext::device_count() {
        Ok(n) => n,
        Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => 0,
        Err(e) => return Err(RuntimeError::driver("initializing the CUDA driver")(e)),
    };
    if count <= 0 {
        return Err(RuntimeError::NoCuda(
            "the CUDA driver is installed but finds no GPU".into(),
        ));
    }
    if ordinal >= count as usize {
        return Err(RuntimeError::Device(format!(
            "there is no CUDA device {ordinal} (this machine has {count})"
        )));
    }
    Ok(())
}

/// The driver's CUDA version (e.g. 13000 for 13.0).
pub fn driver_version() -> Result<i32, RuntimeError> {
    let mut v = 0;
    // SAFETY: `v` is valid for writes.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(RuntimeError::driver("querying the driver version"))?;
    Ok(v)
}

/// A GPU architecture name such as `sm_90a`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arch {
    /// Compute capability major.
    pub major: u32,
    /// Compute capability minor.
    pub minor: u32,
    /// `a` (architecture-specific: exactly this GPU) or `f` (family).
    pub suffix: Option<char>,
}

impl Arch {
    /// Parses `sm_<major><minor>[a|f]`.
    pub fn parse(name: &str) -> Option<Arch> {
        let rest = name.strip_prefix("sm_")?;
        let (digits, suffix) = match rest.chars().last()? {
            c @ ('a' | 'f') => (&rest[..rest.len() - 1], Some(c)),
            _ => (rest, None),
        };
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        Some(Arch {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            suffix,
        })
    }

    /// Whether a CUBIN for this architecture runs on a device of compute
    /// capability `major.minor`.
    pub fn runs_on(self, major: u32, minor: u32) -> bool {
        match self.suffix {
            Some('a') => (major, minor) == (self.major, self.minor),
            _ => major == self.major && minor >= self.minor,
        }
    }
}

/// Makes `ctx` current on this thread, ignoring errors (for drops).
fn bind_quietly(ctx: &CudaContext) {
    // SAFETY: the context is alive (we hold an Arc to it).
    let _ = unsafe { drv::ctx::set_current(ctx.cu_ctx()) };
}

/// A device allocation (`cuMemAlloc`), freed on drop.
#[derive(Debug)]
pub(crate) struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    /// Allocates `bytes` (at least one byte, so empty regions still have an
    /// address) and zeroes them, ordered on `stream`.
    pub fn zeroed(
        ctx: &Arc<CudaContext>,
        stream: sys::CUstream,
        bytes: u64,
        what: &str,
    ) -> Result<Self, RuntimeError> {
        let bytes = usize::try_from(bytes.max(1)).map_err(|_| {
            RuntimeError::Device(format!("{what}: {bytes} bytes do not fit this host"))
        })?;
        ctx.bind_to_thread().map_err(RuntimeError::driver(format!(
            "binding the context to allocate {what}"
        )))?;
        // SAFETY: a plain allocation; the memory is zeroed before use.
        let ptr = unsafe { drv::malloc_sync(bytes) }.map_err(RuntimeError::driver(format!(
            "allocating {what} ({:.3} GB)",
            bytes as f64 / 1e9
        )))?;
        let buffer = DeviceBuffer {
            ptr,
            bytes,
            ctx: ctx.clone(),
        };
        // SAFETY: `ptr` holds `bytes` bytes; `stream` is a live stream of `ctx`.
        unsafe { drv::memset_d8_async(ptr, 0, bytes, stream) }
            .map_err(RuntimeError::driver(format!("zeroing {what}")))?;
        Ok(buffer)
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        bind_quietly(&self.ctx);
        // SAFETY: allocated by `malloc_sync`, freed once.
        let _ = unsafe { drv::free_sync(self.ptr) };
    }
}

/// A loaded module (`cuModuleLoadData`), unloaded on drop.
#[derive(Debug)]
pub(crate) struct Module {
    raw: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

impl Module {
    /// Loads a CUBIN image.
    pub fn load(ctx: &Arc<CudaContext>, cubin: &[u8]) -> Result<Self, sys::CUresult> {
        ctx.bind_to_thread().map_err(|e| e.0)?;
        // The driver parses the ELF image in place: give it 8-byte alignment.
        let mut aligned = vec![0u64; cubin.len().div_ceil(8)];
        // SAFETY: `aligned` has at least `cubin.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                cubin.as_ptr(),
                aligned.as_mut_ptr().cast::<u8>(),
                cubin.len(),
            )
        };
        // SAFETY: `aligned` holds a complete CUBIN and outlives the call.
        let raw = unsafe { drv::module::load_data(aligned.as_ptr().cast()) }.map_err(|e| e.0)?;
        Ok(Module {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// The kernel `name` (which must hold no NUL byte).
    pub fn function(&self, name: &str) -> Result<sys::CUfunction, sys::CUresult> {
        let c = CString::new(name).map_err(|_| sys::CUresult::CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: the module is loaded; the handle lives as long as `self`.
        unsafe { drv::module::get_function(self.raw, c) }.map_err(|e| e.0)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        bind_quietly(&self.ctx);
        // SAFETY: loaded by `load`, unloaded once.
        let _ = unsafe { drv::module::unload(self.raw) };
    }
}

/// An instantiated CUDA graph, destroyed on drop.
#[derive(Debug)]
pub(crate) struct GraphExec {
    raw: sys::CUgraphExec,
    ctx: Arc<CudaContext>,
}

impl GraphExec {
    /// Records what `record` enqueues on `stream` into a graph and
    /// instantiates it. The capture is always ended, also when `record`
    /// fails (the partial graph is discarded).
    pub fn capture(
        ctx: &Arc<CudaContext>,
        stream: sys::CUstream,
        record: impl FnOnce() -> Result<(), RuntimeError>,
    ) -> Result<Self, RuntimeError> {
        ctx.bind_to_thread().map_err(RuntimeError::driver(
            "binding the context for graph capture",
        ))?;
        // SAFETY: `stream` is a live, non-default stream of `ctx`.
        unsafe {
            drv::stream::begin_capture(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(RuntimeError::driver("beginning graph capture"))?;
        let recorded = record();
        // SAFETY: capture was begun on `stream` above.
        let ended = unsafe { drv::stream::end_capture(stream) };
        let graph = match (recorded, ended) {
            (Err(e), Ok(g)) => {
                if !g.is_null() {
                    // SAFETY: the graph was just created and is not used again.
                    let _ = unsafe { drv::graph::destroy(g) };
                }
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
            (Ok(()), Err(e)) => return Err(RuntimeError::driver("ending graph capture")(e)),
            (Ok(()), Ok(g)) if g.is_null() => {
                return Err(RuntimeError::Device(
                    "graph capture produced no graph".into(),
                ))
            }
            (Ok(()), Ok(g)) => g,
        };
        // SAFETY: `graph` is valid; it is destroyed once, after instantiation
        // (the executable graph does not depend on it).
        let exec = unsafe { drv::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        let _ = unsafe { drv::graph::destroy(graph) };
        let raw = exec.map_err(RuntimeError::driver("instantiating the CUDA graph"))?;
        Ok(GraphExec {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// Launches the graph on `stream`.
    pub fn launch(&self, stream: sys::CUstream) -> Result<(), cudarc::driver::DriverError> {
        // SAFETY: the graph and the stream are alive.
        unsafe { drv::graph::launch(self.raw, stream) }
    }

    /// Uploads the graph's resources to the device ahead of the first launch.
    pub fn upload(&self, stream: sys::CUstream) -> Result<(), cudarc::driver::DriverError> {
        // SAFETY: the graph and the stream are alive.
        unsafe { drv::graph::upload(self.raw, stream) }
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        bind_quietly(&self.ctx);
        // SAFETY: instantiated by `capture`, destroyed once.
        let _ = unsafe { drv::graph::exec_destroy(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_architectures() {
        let a = Arch::parse("sm_90a").unwrap();
        assert_eq!((a.major, a.minor, a.suffix), (9, 0, Some('a')));
        assert!(a.runs_on(9, 0));
        assert!(!a.runs_on(10, 0));
        assert!(!a.runs_on(8, 9));
        let b = Arch::parse("sm_86").unwrap();
        assert!(b.runs_on(8, 9));
        assert!(!b.runs_on(8, 0));
        assert_eq!(Arch::parse("sm_100f").unwrap().major, 10);
        for bad in ["compute_90", "sm_9", "sm_", "sm_x0", "90a", ""] {
            assert_eq!(Arch::parse(bad), None, "{bad}");
        }
    }
}
