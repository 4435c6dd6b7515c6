//! cuDNN convolutions (`Step::Conv`, compiled with `[passes]
//! cudnn_convolutions = true`): channels-last bf16/f16/f32 images and
//! filters in cuDNN's NHWC layout (`[k, r, s, c]`, which the im2col
//! lowering's load-time weight permutation already produces), f32
//! accumulation, tensor-core math for 16-bit data. cuDNN reads the image directly, so no
//! im2col patch matrix is written and read back.
//!
//! Each step is planned once at load time: descriptors, the first
//! algorithm cuDNN's heuristic (`cudnnGetConvolutionForwardAlgorithm_v7`)
//! proposes that fits the workspace, then enqueued as
//! `cudnnConvolutionForward` and, with a bias, `cudnnAddTensor` — both
//! capturable into the CUDA graph (no allocation or synchronization).
//! libcudnn is loaded only for artifacts that have such steps;
//! [`check_library`] says so clearly when it is missing.

use std::ffi::c_void;

use cudarc::cudnn::{result as dnn, sys};
use fluxc_artifact::{Conv, ElemType};

use crate::RuntimeError;

/// Fails with [`RuntimeError::NoCuda`] when libcudnn cannot be loaded.
pub fn check_library() -> Result<(), RuntimeError> {
    // SAFETY: only tries to dlopen the library (and closes it again).
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    Err(RuntimeError::NoCuda(
        "this artifact's convolutions run through cuDNN ([passes] cudnn_convolutions), but \
         libcudnn (cuDNN 9, libcudnn.so.9) could not be loaded: install cuDNN 9 or put the \
         directory holding it on LD_LIBRARY_PATH (PyTorch's wheel ships it in \
         site-packages/nvidia/cudnn/lib), or compile the model without cudnn_convolutions"
            .into(),
    ))
}

/// A cuDNN handle. Each enqueue binds it to the stream the step goes to:
/// the engine's own, or a pipeline's that records every engine's steps
/// into one CUDA graph (a handle left on the engine's stream would run
/// its convolutions outside that capture, once, at record time).
#[derive(Debug)]
pub(crate) struct CudnnHandle {
    raw: sys::cudnnHandle_t,
}

impl CudnnHandle {
    /// A handle on the current context.
    pub fn new() -> Result<Self, RuntimeError> {
        let raw = dnn::create_handle().map_err(|e| cudnn_error("creating the cuDNN handle", e))?;
        Ok(CudnnHandle { raw })
    }
}

impl Drop for CudnnHandle {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { dnn::destroy_handle(self.raw) };
    }
}

fn cudnn_error(what: &str, e: dnn::CudnnError) -> RuntimeError {
    RuntimeError::Device(format!("{what}: cuDNN error {e:?}"))
}

/// The device addresses a convolution reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvAddrs {
    pub x: u64,
    pub w: u64,
    pub y: u64,
    pub bias: Option<u64>,
}

/// One planned convolution.
#[derive(Debug)]
pub(crate) struct ConvPlan {
    x: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    y: TensorDesc,
    bias: Option<TensorDesc>,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    /// Workspace bytes the algorithm needs.
    pub workspace_bytes: usize,
    addrs: ConvAddrs,
}

#[derive(Debug)]
struct TensorDesc(sys::cudnnTensorDescriptor_t);
impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by `tensor_desc`, destroyed once.
        let _ = unsafe { dnn::destroy_tensor_descriptor(self.0) };
    }
}
#[derive(Debug)]
struct FilterDesc(sys::cudnnFilterDescriptor_t);
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by `ConvPlan::new`, destroyed once.
        let _ = unsafe { dnn::destroy_filter_descriptor(self.0) };
    }
}
#[derive(Debug)]
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by `ConvPlan::new`, destroyed once.
        let _ = unsafe { dnn::destroy_convolution_descriptor(self.0) };
    }
}

/// cuDNN's type of `dtype`, the type of its convolution's arithmetic, and
/// the math: tensor cores for 16-bit data, plain f32 FMAs for f32 (tensor
/// cores would round f32 operands to TF32, ~1e-3 relative).
fn data_type(
    dtype: ElemType,
) -> Result<
    (
        sys::cudnnDataType_t,
        sys::cudnnDataType_t,
        sys::cudnnMathType_t,
    ),
    String,
> {
    use sys::cudnnDataType_t as T;
    use sys::cudnnMathType_t as M;
    match dtype {
        ElemType::Bf16 => Ok((
            T::CUDNN_DATA_BFLOAT16,
            T::CUDNN_DATA_FLOAT,
            M::CUDNN_TENSOR_OP_MATH,
        )),
        ElemType::F16 => Ok((
            T::CUDNN_DATA_HALF,
            T::CUDNN_DATA_FLOAT,
            M::CUDNN_TENSOR_OP_MATH,
        )),
        ElemType::F32 => Ok((T::CUDNN_DATA_FLOAT, T::CUDNN_DATA_FLOAT, M::CUDNN_FMA_MATH)),
        other => Err(format!(
            "{other:?} convolutions are not supported by cuDNN here"
        )),
    }
}

/// An NHWC tensor descriptor of `[n, h, w, c]`.
fn tensor_desc(dtype: sys::cudnnDataType_t, [n, h, w, c]: [u32; 4]) -> Result<TensorDesc, String> {
    let int = |v: u32| v as i32;
    let desc = TensorDesc(dnn::create_tensor_descriptor().map_err(|e| format!("{e:?}"))?);
    // SAFETY: the descriptor was just created.
    unsafe {
        dnn::set_tensor4d_descriptor(
            desc.0,
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
            dtype,
            [int(n), int(c), int(h), int(w)],
        )
    }
    .map_err(|e| format!("an NHWC tensor [{n}, {h}, {w}, {c}]: {e:?}"))?;
    Ok(desc)
}

impl ConvPlan {
    /// Builds the descriptors of `c` (checked by `plan::check_step`) and
    /// picks its algorithm; the reason, in words, when cuDNN cannot run it.
    pub fn new(
        handle: &CudnnHandle,
        c: &Conv,
        addrs: ConvAddrs,
        workspace_limit: usize,
    ) -> Result<Self, String> {
        let (dtype, compute, math) = data_type(c.dtype)?;
        let [n, h, w, ch] = c.input;
        let [k, r, s] = c.filter;
        let [p, q] = c.output;
        let x = tensor_desc(dtype, [n, h, w, ch])?;
        let y = tensor_desc(dtype, [n, p, q, k])?;
        let bias = match addrs.bias {
            Some(_) => Some(tensor_desc(dtype, [1, 1, 1, k])?),
            None => None,
        };
        let filter = FilterDesc(dnn::create_filter_descriptor().map_err(|e| format!("{e:?}"))?);
        // SAFETY: the descriptor was just created.
        unsafe {
            dnn::set_filter4d_descriptor(
                filter.0,
                dtype,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                [k as i32, ch as i32, r as i32, s as i32],
            )
        }
        .map_err(|e| format!("the filter [{k}, {r}, {s}, {ch}]: {e:?}"))?;
        let conv = ConvDesc(dnn::create_convolution_descriptor().map_err(|e| format!("{e:?}"))?);
        // SAFETY: the descriptor was just created.
        unsafe {
            dnn::set_convolution2d_descriptor(
                conv.0,
                c.padding[0] as i32,
                c.padding[1] as i32,
                c.stride[0] as i32,
                c.stride[1] as i32,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                compute,
            )
            .and_then(|()| dnn::set_convolution_math_type(conv.0, math))
        }
        .map_err(|e| format!("the convolution descriptor: {e:?}"))?;
        // The heuristic's candidates, best first; the first that fits.
        const CANDIDATES: usize = 8;
        let mut results: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> = (0..CANDIDATES)
            // SAFETY: a plain C struct; all-zero is valid.
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        let mut returned = 0;
        // SAFETY: every descriptor is alive; `results` holds CANDIDATES entries.
        unsafe {
            dnn::get_convolution_forward_algorithm(
                handle.raw,
                x.0,
                filter.0,
                conv.0,
                y.0,
                CANDIDATES as i32,
                &mut returned,
                results.as_mut_ptr(),
            )
        }
        .map_err(|e| format!("cuDNN's algorithm heuristic: {e:?}"))?;
        let pick = results
            .iter()
            .take(returned.max(0) as usize)
            .find(|r| {
                r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && r.memory <= workspace_limit
            })
            .ok_or_else(|| {
                format!(
                    "cuDNN proposes no algorithm within the {workspace_limit}-byte workspace \
                     ({returned} candidates)"
                )
            })?;
        Ok(ConvPlan {
            x,
            w: filter,
            conv,
            y,
            bias,
            algo: pick.algo,
            workspace_bytes: pick.memory,
            addrs,
        })
    }

    /// Enqueues the convolution (and the bias) on `stream`.
    ///
    /// # Safety
    /// The addresses must be live device memory of the sizes the
    /// descriptors describe and `workspace` must hold `workspace_size` bytes;
    /// `stream` must belong to the handle's context.
    pub unsafe fn enqueue(
        &self,
        handle: &CudnnHandle,
        workspace: u64,
        workspace_size: usize,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), RuntimeError> {
        dnn::set_stream(handle.raw, stream as sys::cudaStream_t)
            .map_err(|e| cudnn_error("binding cuDNN to the stream", e))?;
        let (one, zero) = (1f32, 0f32);
        let ptr = |a: u64| a as *mut c_void;
        dnn::convolution_forward(
            handle.raw,
            (&one as *const f32).cast(),
            self.x.0,
            ptr(self.addrs.x),
            self.w.0,
            ptr(self.addrs.w),
            self.conv.0,
            self.algo,
            ptr(workspace),
            workspace_size,
            (&zero as *const f32).cast(),
            self.y.0,
            ptr(self.addrs.y),
        )
        .map_err(|e| cudnn_error("running a convolution", e))?;
        if let (Some(desc), Some(bias)) = (&self.bias, self.addrs.bias) {
            sys::cudnnAddTensor(
                handle.raw,
                (&one as *const f32).cast(),
                desc.0,
                ptr(bias),
                (&one as *const f32).cast(),
                self.y.0,
                ptr(self.addrs.y),
            )
            .result()
            .map_err(|e| cudnn_error("adding a convolution's bias", e))?;
        }
        Ok(())
    }
}
