//! cuBLASLt's side of [`crate::gemm_space`]: listing algorithm ids and
//! their capabilities ([`LtCapabilities`]), reading an algorithm's
//! configuration attributes ([`read_config`]) and building an algorithm
//! from a configuration ([`build`]).
//!
//! A built algorithm is only a candidate: `GemmPlan::new`, which every
//! measurement goes through, validates it against the GEMM's descriptors
//! with `cublasLtMatmulAlgoCheck` and its workspace against the schedule's,
//! so an unsupported one is rejected before anything is launched.
//!
//! Attribute sizes are cublasLt.h's: the id an `int32_t`, the inner and
//! cluster shapes `uint16_t`, the other configuration attributes
//! `uint32_t`; split-K support and CTA swizzling support `int32_t` and
//! `uint32_t`, the reduction scheme mask a `uint32_t`, tile and stages ids
//! arrays of `uint32_t`.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::sys;

use crate::blas::{BlasHandle, MatmulTypes};
use crate::gemm_space::{AlgoCaps, AlgoConfig, CapabilitySource};

type Cap = sys::cublasLtMatmulAlgoCapAttributes_t;
type Conf = sys::cublasLtMatmulAlgoConfigAttributes_t;

/// At most this many algorithm ids are listed.
const MAX_IDS: usize = 256;

/// The capabilities of the algorithms of one GEMM's types.
pub(crate) struct LtCapabilities<'a> {
    handle: &'a BlasHandle,
    types: MatmulTypes,
}

impl<'a> LtCapabilities<'a> {
    /// The source for GEMMs of `types`.
    pub fn new(handle: &'a BlasHandle, types: MatmulTypes) -> Self {
        LtCapabilities { handle, types }
    }
}

/// An algorithm of id `id` for `types`, in its initial configuration.
fn init(
    handle: &BlasHandle,
    types: MatmulTypes,
    id: i32,
) -> Result<sys::cublasLtMatmulAlgo_t, String> {
    let mut algo = sys::cublasLtMatmulAlgo_t { data: [0; 8] };
    // SAFETY: the handle is alive; `algo` is valid for writes.
    unsafe {
        sys::cublasLtMatmulAlgoInit(
            handle.raw(),
            types.compute,
            types.scale,
            types.ab,
            types.ab,
            types.cd,
            types.cd,
            id,
            &mut algo,
        )
    }
    .result()
    .map_err(|e| format!("initialising algorithm {id}: {e}"))?;
    Ok(algo)
}

/// A scalar capability of `algo`.
fn cap<T: Copy + Default>(algo: &sys::cublasLtMatmulAlgo_t, attr: Cap) -> Result<T, String> {
    let mut value = T::default();
    let mut written = 0usize;
    // SAFETY: `algo` was initialised by `cublasLtMatmulAlgoInit`; `value`
    // is valid for `size_of::<T>()` bytes of writes; `written` for one.
    unsafe {
        sys::cublasLtMatmulAlgoCapGetAttribute(
            algo,
            attr,
            (&mut value as *mut T).cast::<c_void>(),
            size_of::<T>(),
            &mut written,
        )
    }
    .result()
    .map_err(|e| format!("reading {attr:?}: {e}"))?;
    Ok(value)
}

/// An array-of-`uint32_t` capability of `algo` (tile or stages ids).
fn cap_list(algo: &sys::cublasLtMatmulAlgo_t, attr: Cap) -> Result<Vec<u32>, String> {
    let mut needed = 0usize;
    // SAFETY: a size query: no buffer, `needed` valid for one write.
    unsafe {
        sys::cublasLtMatmulAlgoCapGetAttribute(algo, attr, std::ptr::null_mut(), 0, &mut needed)
    }
    .result()
    .map_err(|e| format!("sizing {attr:?}: {e}"))?;
    let mut values = vec![0u32; needed / size_of::<u32>()];
    if values.is_empty() {
        return Ok(values);
    }
    let mut written = 0usize;
    // SAFETY: `values` holds `values.len() * 4` bytes; `written` valid for
    // one write.
    unsafe {
        sys::cublasLtMatmulAlgoCapGetAttribute(
            algo,
            attr,
            values.as_mut_ptr().cast::<c_void>(),
            values.len() * size_of::<u32>(),
            &mut written,
        )
    }
    .result()
    .map_err(|e| format!("reading {attr:?}: {e}"))?;
    values.truncate(written / size_of::<u32>());
    Ok(values)
}

impl CapabilitySource for LtCapabilities<'_> {
    fn algo_ids(&self) -> Result<Vec<i32>, String> {
        let t = self.types;
        let mut ids = vec![0i32; MAX_IDS];
        let mut returned = 0i32;
        // SAFETY: the handle is alive; `ids` holds MAX_IDS entries and
        // `returned` is valid for one write.
        unsafe {
            sys::cublasLtMatmulAlgoGetIds(
                self.handle.raw(),
                t.compute,
                t.scale,
                t.ab,
                t.ab,
                t.cd,
                t.cd,
                MAX_IDS as i32,
                ids.as_mut_ptr(),
                &mut returned,
            )
        }
        .result()
        .map_err(|e| format!("listing cuBLASLt's algorithms: {e}"))?;
        ids.truncate(usize::try_from(returned).unwrap_or(0).min(MAX_IDS));
        Ok(ids)
    }

    fn caps(&self, id: i32) -> Result<AlgoCaps, String> {
        let algo = init(self.handle, self.types, id)?;
        Ok(AlgoCaps {
            tiles: cap_list(&algo, Cap::CUBLASLT_ALGO_CAP_TILE_IDS)?,
            stages: cap_list(&algo, Cap::CUBLASLT_ALGO_CAP_STAGES_IDS)?,
            split_k: cap::<i32>(&algo, Cap::CUBLASLT_ALGO_CAP_SPLITK_SUPPORT)? != 0,
            reduction_mask: cap::<u32>(&algo, Cap::CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK)?,
            swizzle: cap::<u32>(&algo, Cap::CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT)? != 0,
        })
    }
}

/// One configuration attribute of `algo`.
fn get<T: Copy + Default>(algo: &sys::cublasLtMatmulAlgo_t, attr: Conf) -> Result<T, String> {
    let mut value = T::default();
    let mut written = 0usize;
    // SAFETY: `algo` is a full `cublasLtMatmulAlgo_t`; `value` is valid
    // for `size_of::<T>()` bytes of writes; `written` for one.
    unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            (&mut value as *mut T).cast::<c_void>(),
            size_of::<T>(),
            &mut written,
        )
    }
    .result()
    .map_err(|e| format!("reading {attr:?}: {e}"))?;
    Ok(value)
}

/// Sets one configuration attribute of `algo`.
fn set<T: Copy>(algo: &mut sys::cublasLtMatmulAlgo_t, attr: Conf, value: T) -> Result<(), String> {
    // SAFETY: `algo` was initialised by `cublasLtMatmulAlgoInit`; `value`
    // is valid for `size_of::<T>()` bytes of reads.
    unsafe {
        sys::cublasLtMatmulAlgoConfigSetAttribute(
            algo,
            attr,
            (&value as *const T).cast::<c_void>(),
            size_of::<T>(),
        )
    }
    .result()
    .map_err(|e| format!("setting {attr:?}: {e}"))
}

/// The configuration attributes of the algorithm `words` (e.g. a
/// heuristic result's).
pub(crate) fn read_config(words: [u64; 8]) -> Result<AlgoConfig, String> {
    let algo = sys::cublasLtMatmulAlgo_t { data: words };
    Ok(AlgoConfig {
        algo_id: get::<i32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_ID)?,
        tile: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_TILE_ID)?,
        stages: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_STAGES_ID)?,
        split_k: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_SPLITK_NUM)?,
        reduction: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME)?,
        swizzle: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING)?,
        custom_option: get::<u32>(&algo, Conf::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION)?,
        inner_shape: get::<u16>(&algo, Conf::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID)?,
        cluster_shape: get::<u16>(&algo, Conf::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)?,
    })
}

/// The algorithm of configuration `c` for GEMMs of `types`, as the words
/// `Gemm::algo` records (not yet checked against a GEMM: see the module
/// docs).
pub(crate) fn build(
    handle: &BlasHandle,
    types: MatmulTypes,
    c: &AlgoConfig,
) -> Result<[u64; 8], String> {
    let mut algo = init(handle, types, c.algo_id)?;
    set(&mut algo, Conf::CUBLASLT_ALGO_CONFIG_TILE_ID, c.tile)?;
    set(&mut algo, Conf::CUBLASLT_ALGO_CONFIG_STAGES_ID, c.stages)?;
    set(&mut algo, Conf::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, c.split_k)?;
    set(
        &mut algo,
        Conf::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
        c.reduction,
    )?;
    set(
        &mut algo,
        Conf::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
        c.swizzle,
    )?;
    set(
        &mut algo,
        Conf::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION,
        c.custom_option,
    )?;
    set(
        &mut algo,
        Conf::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID,
        c.inner_shape,
    )?;
    set(
        &mut algo,
        Conf::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
        c.cluster_shape,
    )?;
    Ok(algo.data)
}
