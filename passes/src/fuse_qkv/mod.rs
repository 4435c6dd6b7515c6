//! q/k/v fusion: linears that read the same input become one wide linear
//! followed by slices, decided on an e-graph.
//!
//! Every biased `linear` of the graph is added to an e-graph over opaque
//! leaves; the rules (`rules.rs`) fuse pairs of linears sharing an input,
//! repeatedly, so the image-stream q/k/v of a double block (3072 → 9216), its
//! text-stream q/k/v, and a single block's q/k/v together with `proj_mlp`
//! (3072 → 21504) each end up as one linear. The cost model (`cost.rs`)
//! then extracts, for each original linear, the cheapest equivalent: a
//! `cols` view of a fused linear when sharing pays. Back in the graph the
//! stacked weights are a `concat` of weight inputs — a weight-only
//! computation that the `hoist_weights` pass turns into a load-time
//! transform, so no weight is copied into the graph.
//!
//! The runner's limits are explicit and the `deterministic` feature of egg is
//! on, so the same graph always fuses the same way.
//!
//! Linears with fewer input rows than the e-graph considers are handled by
//! [`stack_one_row_linears`] (`one_row.rs`): one-row linears sharing an
//! input are always stacked, without a cost model. So are more than
//! [`MAX_EGRAPH_FAN_OUT`] linears on one input: the e-graph would hold a
//! fused linear for every run of them, and each linear's own cheapest
//! extraction picks a different, overlapping run (a 28-step pipeline's
//! conditioning, 115 linears on one input, once came out as 32.7 GB of
//! stacked weight copies out of 6.5 GB, after a long saturation).

mod cost;
mod lang;
mod one_row;
mod rules;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use egg::{EGraph, Extractor, Id, Language, RecExpr, Runner, SimpleScheduler, Symbol};
use fluxc_ir::{Graph, IrError, NodeId, Op};

use cost::ForwardTime;
use lang::{Facts, LeafFacts, LinearLang};
pub use one_row::stack_one_row_linears;

/// Rewrite iterations; three suffice to fuse four linears pairwise.
const ITER_LIMIT: usize = 8;
/// E-nodes; FLUX.1 needs a few thousand.
const NODE_LIMIT: usize = 200_000;
/// Wall-clock bound on saturation.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// The most linears on one input the e-graph fuses; larger groups are
/// stacked whole (FLUX's largest group is a single block's q/k/v/mlp: 4).
pub const MAX_EGRAPH_FAN_OUT: usize = 6;

/// What the pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Linears before the pass.
    pub linears_before: usize,
    /// Linears after the pass.
    pub linears_after: usize,
    /// Why the e-graph runner stopped (for dumps).
    pub stop_reason: String,
}

/// Fuses biased linears that share an input and have at least `min_rows`
/// input rows.
pub fn fuse_shared_input_linears(
    graph: &mut Graph,
    min_rows: usize,
) -> Result<FuseReport, IrError> {
    let mut report = FuseReport {
        linears_before: count_linears(graph),
        ..FuseReport::default()
    };
    one_row::stack_linears(graph, |rows, count| {
        rows >= min_rows.max(1) && count > MAX_EGRAPH_FAN_OUT
    })?;
    let linears = biased_linears(graph)?;
    if linears.is_empty() {
        report.linears_after = report.linears_before;
        return Ok(report);
    }

    let (egraph, roots) = build_egraph(graph, &linears);
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(ITER_LIMIT)
        .with_node_limit(NODE_LIMIT)
        .with_time_limit(TIME_LIMIT)
        .with_scheduler(SimpleScheduler)
        .run(&rules::rules(min_rows));
    report.stop_reason = format!("{:?}", runner.stop_reason);

    let extractor = Extractor::new(&runner.egraph, ForwardTime::new(&runner.egraph));
    let mut rebuild = Rebuild::new(graph);
    for (&node, &root) in linears.iter().zip(&roots) {
        let (_, best) = extractor.find_best(runner.egraph.find(root));
        if matches!(best[best.root()], LinearLang::Linear(_)) {
            continue; // kept as it was
        }
        let scope = graph.node(node).scope.clone();
        let value = rebuild.value(graph, &best, best.root(), &scope)?;
        graph.replace_all_uses(node, value)?;
    }
    graph.remove_dead_nodes();
    report.linears_after = count_linears(graph);
    Ok(report)
}

fn count_linears(graph: &Graph) -> usize {
    graph
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::Linear))
        .count()
}

/// Live linears with a bias, in topological order.
fn biased_linears(graph: &Graph) -> Result<Vec<NodeId>, IrError> {
    let live = graph.live_nodes();
    Ok(graph
        .topo_order()?
        .into_iter()
        .filter(|id| live.contains(id))
        .filter(|&id| matches!(graph.node(id).op, Op::Linear) && graph.operands(id).len() == 3)
        .collect())
}

fn leaf(id: NodeId) -> Symbol {
    Symbol::from(format!("%{}", id.index()))
}

/// The e-graph of all candidate linears, and each one's e-class.
fn build_egraph(graph: &Graph, linears: &[NodeId]) -> (EGraph<LinearLang, Facts>, Vec<Id>) {
    let mut facts = Facts::default();
    let weight_order: HashMap<NodeId, u32> = graph
        .inputs()
        .into_iter()
        .filter(|&id| graph.node(id).op.is_weight())
        .enumerate()
        .map(|(i, id)| (id, i as u32))
        .collect();
    for &l in linears {
        let [x, w, b] = <[NodeId; 3]>::try_from(graph.operands(l)).expect("biased linear");
        let x_dims = graph.ty(x).shape.dims();
        let width = *x_dims.last().unwrap_or(&0);
        facts.leaves.insert(
            leaf(x),
            LeafFacts {
                width,
                rows: graph.ty(x).shape.numel() / width.max(1),
                order: None,
            },
        );
        for p in [w, b] {
            facts.leaves.insert(
                leaf(p),
                LeafFacts {
                    width: graph.ty(p).shape.dims()[0],
                    rows: 0,
                    order: weight_order.get(&p).copied(),
                },
            );
        }
    }
    let mut egraph = EGraph::new(facts);
    let roots = linears
        .iter()
        .map(|&l| {
            let ids: Vec<Id> = graph
                .operands(l)
                .into_iter()
                .map(|o| egraph.add(LinearLang::Leaf(leaf(o))))
                .collect();
            egraph.add(LinearLang::Linear([ids[0], ids[1], ids[2]]))
        })
        .collect();
    (egraph, roots)
}

/// Turns extracted expressions back into graph nodes, building each fused
/// linear and stacked weight once however many slices read it.
struct Rebuild {
    by_leaf: HashMap<Symbol, NodeId>,
    built: BTreeMap<String, NodeId>,
}

impl Rebuild {
    fn new(graph: &Graph) -> Self {
        Rebuild {
            by_leaf: graph
                .node_ids()
                .into_iter()
                .map(|id| (leaf(id), id))
                .collect(),
            built: BTreeMap::new(),
        }
    }

    /// The graph value of `expr[id]`; `scope` names the original linear
    /// (used for the slice that replaces it).
    fn value(
        &mut self,
        graph: &mut Graph,
        expr: &RecExpr<LinearLang>,
        id: Id,
        scope: &str,
    ) -> Result<NodeId, IrError> {
        let key = expr[id]
            .build_recexpr(|child| expr[child].clone())
            .to_string();
        if let Some(&node) = self.built.get(&key) {
            return Ok(node);
        }
        let node = match &expr[id] {
            LinearLang::Leaf(name) => *self.by_leaf.get(name).ok_or_else(|| {
                IrError::Invalid(format!("e-graph leaf {name} is not in the graph"))
            })?,
            LinearLang::Num(n) => {
                return Err(IrError::Invalid(format!("the number {n} is not a value")))
            }
            LinearLang::Cat(_) => {
                let mut parts = Vec::new();
                self.stacked_leaves(expr, id, &mut parts)?;
                let scope = common_scope(parts.iter().map(|&p| graph.node(p).scope.as_str()));
                graph.add_node(Op::Concat { axis: 0 }, &parts, &scope)?
            }
            LinearLang::Linear([x, w, b]) => {
                let x = self.value(graph, expr, *x, scope)?;
                let w = self.value(graph, expr, *w, scope)?;
                let b = self.value(graph, expr, *b, scope)?;
                let linear_scope = graph.node(w).scope.clone();
                graph.add_node(Op::Linear, &[x, w, b], &linear_scope)?
            }
            LinearLang::Cols([start, len, t]) => {
                let (LinearLang::Num(start), LinearLang::Num(len)) = (&expr[*start], &expr[*len])
                else {
                    return Err(IrError::Invalid("cols without numeric bounds".into()));
                };
                let t = self.value(graph, expr, *t, scope)?;
                let axis = graph.ty(t).shape.rank() - 1;
                let op = Op::Slice {
                    axis,
                    start: *start,
                    end: start + len,
                };
                graph.add_node(op, &[t], scope)?
            }
        };
        self.built.insert(key, node);
        Ok(node)
    }

    /// The graph weights a `cat` tree stacks, in order.
    fn stacked_leaves(
        &self,
        expr: &RecExpr<LinearLang>,
        id: Id,
        out: &mut Vec<NodeId>,
    ) -> Result<(), IrError> {
        match &expr[id] {
            LinearLang::Cat([a, b]) => {
                self.stacked_leaves(expr, *a, out)?;
                self.stacked_leaves(expr, *b, out)
            }
            LinearLang::Leaf(name) => {
                let node = self.by_leaf.get(name).ok_or_else(|| {
                    IrError::Invalid(format!("e-graph leaf {name} is not in the graph"))
                })?;
                out.push(*node);
                Ok(())
            }
            other => Err(IrError::Invalid(format!("cannot stack {other}"))),
        }
    }
}

/// The longest common dotted prefix of scopes (`a.b.c`, `a.b.d` → `a.b`).
fn common_scope<'a>(scopes: impl Iterator<Item = &'a str>) -> String {
    let mut common: Option<Vec<&str>> = None;
    for scope in scopes {
        let parts: Vec<&str> = scope.split('.').collect();
        common = Some(match common {
            None => parts,
            Some(c) => c
                .iter()
                .zip(&parts)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    common.unwrap_or_default().join(".")
}
