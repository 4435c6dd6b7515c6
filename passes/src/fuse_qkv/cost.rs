//! The cost model that picks what fusion to keep: estimated time on an
//! H200, in microseconds, with shared work apportioned.
//!
//! A linear costs a fixed launch-and-tail overhead plus the larger of its
//! memory time (input, weight and output in bf16) and its math time. A
//! `cols` view costs a sliver of the linear it views, proportional to the
//! features it takes (plus a tiny epsilon so a flat view beats a nested one):
//! tree extraction counts a shared node once per user, and apportioning is
//! what lets the fused linear win. `cat` of weights happens at load time and
//! costs nothing per forward.

use egg::{CostFunction, EGraph, Id, Language};

use super::lang::{Facts, LinearLang};

/// Launch and pipeline fill/drain of one GEMM, µs.
const LAUNCH_US: f64 = 4.0;
/// HBM bandwidth, bytes per µs (4.8 TB/s).
const BYTES_PER_US: f64 = 4.8e6;
/// Dense bf16 tensor-core rate, FLOP per µs (~800 TFLOP/s measured).
const FLOP_PER_US: f64 = 8.0e8;
/// Bytes per element (bf16).
const ELEMENT_BYTES: f64 = 2.0;
/// Cost of a view itself, so fewer views win ties.
const VIEW_EPSILON: f64 = 1e-6;

/// Estimated forward time of an expression.
pub struct ForwardTime<'a> {
    egraph: &'a EGraph<LinearLang, Facts>,
}

impl<'a> ForwardTime<'a> {
    /// A cost function reading widths and rows from `egraph`.
    pub fn new(egraph: &'a EGraph<LinearLang, Facts>) -> Self {
        ForwardTime { egraph }
    }

    /// Time of one linear: `rows × k` input, `n × k` weight, `rows × n` output.
    pub fn linear_us(rows: usize, k: usize, n: usize) -> f64 {
        let (rows, k, n) = (rows as f64, k as f64, n as f64);
        let bytes = (rows * k + n * k + rows * n) * ELEMENT_BYTES;
        let flops = 2.0 * rows * k * n;
        LAUNCH_US + (bytes / BYTES_PER_US).max(flops / FLOP_PER_US)
    }
}

impl CostFunction<LinearLang> for ForwardTime<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &LinearLang, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let facts = |id: &Id| &self.egraph[*id].data;
        match enode {
            LinearLang::Linear([x, w, _]) => {
                let (x, w) = (facts(x), facts(w));
                // The input's features are the weight's second dim; the input
                // leaf's width is exactly that.
                Self::linear_us(x.rows, x.width, w.width)
            }
            LinearLang::Cols([_, len, t]) => {
                let share = facts(len).num.unwrap_or(0) as f64 / facts(t).width.max(1) as f64;
                VIEW_EPSILON + costs(*t) * share
            }
            LinearLang::Cat(_) | LinearLang::Num(_) | LinearLang::Leaf(_) => {
                enode.fold(0.0, |sum, id| sum + costs(id))
            }
        }
    }
}
