//! What the GPU tuners share: `gemm_tuning` (cuBLASLt algorithms) and
//! `kernel_bench` (generated-kernel variants) both run candidates on one
//! stream of their own context, on random operands in as many copies as
//! keep successive launches from finding their inputs in L2, time them in
//! batches of back-to-back launches between CUDA events, and accept a
//! candidate only when its output is within a relative L2 distance of the
//! default's.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaStream};
use fluxc_artifact::ElemType;

use crate::convert::encode;
use crate::cuda::{check_device, check_libraries, DeviceBuffer};
use crate::timing::Stats;
use crate::RuntimeError;

/// How candidates are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTiming {
    /// Untimed launches.
    pub warmup: usize,
    /// Timed batches.
    pub batches: usize,
    /// Launches per batch.
    pub per_batch: usize,
    /// After the warm-up, keep launching back to back (in batches) for at
    /// least this many milliseconds before timing (0: not at all). A
    /// long-running GPU kernel at full tilt reaches the board's power limit
    /// within about a second and runs at a lower clock from then on, as
    /// the FLUX forward does throughout (docs/performance.md): sustained,
    /// a candidate is timed at the clock its own power draw leaves it,
    /// which ranks candidates by energy as much as by speed.
    pub sustain_ms: u32,
}

impl Default for BenchTiming {
    fn default() -> Self {
        BenchTiming {
            warmup: 3,
            batches: 5,
            per_batch: 20,
            sustain_ms: 0,
        }
    }
}

/// Deterministic values in [-1, 1) (a linear congruential generator).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Relative L2 distance of `x` from `reference`: NaN when either holds a
/// NaN, infinite when the reference is all zeros and `x` is not.
pub fn rel_l2(x: &[f32], reference: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&a, &r) in x.iter().zip(reference) {
        diff += (f64::from(a) - f64::from(r)).powi(2);
        norm += f64::from(r).powi(2);
    }
    if diff.is_nan() || norm.is_nan() {
        return f64::NAN;
    }
    if norm == 0.0 {
        return if diff == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (diff / norm).sqrt()
}

/// Copies of `input_bytes` of operands (one to four) that together exceed
/// twice the L2, so no launch reads what the previous one left there.
pub(crate) fn copies(l2_bytes: u64, input_bytes: u64) -> usize {
    (2 * l2_bytes).div_ceil(input_bytes.max(1)).clamp(1, 4) as usize
}

/// A context and stream to measure on.
pub(crate) struct BenchContext {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Bytes of the device's L2.
    pub l2_bytes: u64,
}

impl BenchContext {
    /// A context on `device`, with cuBLASLt checked for too when `cublaslt`.
    pub fn new(device: usize, cublaslt: bool) -> Result<Self, RuntimeError> {
        check_libraries(cublaslt)?;
        check_device(device)?;
        let ctx =
            CudaContext::new(device).map_err(RuntimeError::driver("creating the CUDA context"))?;
        // SAFETY: everything is ordered on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(RuntimeError::driver("creating a stream"))?;
        ctx.bind_to_thread()
            .map_err(RuntimeError::driver("binding the context"))?;
        let l2_bytes = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_err(RuntimeError::driver("querying the L2 size"))? as u64;
        Ok(BenchContext {
            ctx,
            stream,
            l2_bytes,
        })
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    pub fn sync(&self, what: &str) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(RuntimeError::driver(what.to_string()))
    }

    /// A device buffer holding `values` encoded as `dtype`.
    pub fn upload(
        &self,
        dtype: ElemType,
        values: &[f32],
        what: &str,
    ) -> Result<DeviceBuffer, RuntimeError> {
        let bytes = encode(dtype, values);
        let buffer =
            DeviceBuffer::zeroed(&self.ctx, self.stream.cu_stream(), bytes.len() as u64, what)?;
        self.write(&buffer, &bytes, what)?;
        Ok(buffer)
    }

    /// Copies `bytes` into the start of `buffer`.
    pub fn write(
        &self,
        buffer: &DeviceBuffer,
        bytes: &[u8],
        what: &str,
    ) -> Result<(), RuntimeError> {
        // SAFETY: `buffer` holds at least `bytes.len()` bytes (the callers
        // size it so); `bytes` lives until the sync.
        unsafe { drv::memcpy_htod_async(buffer.ptr(), bytes, self.stream.cu_stream()) }
            .map_err(RuntimeError::driver(format!("uploading {what}")))?;
        self.sync(&format!("uploading {what}"))
    }

    /// Median µs per launch: `launch(i)` enqueues launch `i` (callers rotate
    /// operand copies by it), `timing.warmup` times untimed, then
    /// `timing.batches` batches of `timing.per_batch` between two events.
    pub fn time(
        &self,
        timing: BenchTiming,
        mut launch: impl FnMut(usize) -> Result<(), RuntimeError>,
    ) -> Result<f64, RuntimeError> {
        for i in 0..timing.warmup {
            launch(i)?;
        }
        if timing.sustain_ms > 0 {
            let start = Instant::now();
            let mut i = timing.warmup;
            while start.elapsed().as_millis() < u128::from(timing.sustain_ms) {
                for _ in 0..timing.per_batch.max(1) {
                    launch(i)?;
                    i += 1;
                }
                self.sync("sustaining the launches")?;
            }
        }
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(RuntimeError::driver("creating a timing event"))
        };
        let per_batch = timing.per_batch.max(1);
        let mut batches = Vec::with_capacity(timing.batches.max(1));
        for _ in 0..timing.batches.max(1) {
            let (start, end) = (event()?, event()?);
            start
                .record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            for i in 0..per_batch {
                launch(i)?;
            }
            end.record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            batches.push((start, end));
        }
        self.sync("running the timed launches")?;
        let mut us = Vec::with_capacity(batches.len());
        for (start, end) in &batches {
            let ms = start
                .elapsed_ms(end)
                .map_err(RuntimeError::driver("reading a timing event"))?;
            us.push(f64::from(ms) * 1e3 / per_batch as f64);
        }
        Ok(Stats::of(&us).map_or(f64::NAN, |s| s.median))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[1.0, 0.0], &[0.0, 1.0]) - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(rel_l2(&[0.0], &[0.0]), 0.0);
        assert!(rel_l2(&[1.0], &[0.0]).is_infinite());
        assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan());
    }

    #[test]
    fn values_are_deterministic_and_in_range() {
        let v = pseudo_random(1000, 7);
        assert_eq!(v, pseudo_random(1000, 7));
        assert_ne!(v, pseudo_random(1000, 8));
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
    }

    #[test]
    fn copies_exceed_twice_the_l2() {
        let l2 = 50 << 20;
        assert_eq!(copies(l2, 1 << 30), 1);
        assert_eq!(copies(l2, 30 << 20), 4);
        assert_eq!(copies(l2, 40 << 20), 3);
        assert_eq!(copies(l2, 0), 4);
    }
}
