//! The rewrite rules of linear fusion.
//!
//! | rule | from | to |
//! | --- | --- | --- |
//! | `fuse-shared-input` | `?a = (linear ?x ?w1 ?b1), ?b = (linear ?x ?w2 ?b2)` | `?a = (cols 0 n1 L), ?b = (cols n1 n2 L)` with `L = (linear ?x (cat ?w1 ?w2) (cat ?b1 ?b2))` |
//! | `cols-of-cols` | `(cols ?s1 ?l1 (cols ?s2 ?l2 ?t))` | `(cols s1+s2 ?l1 ?t)` |
//!
//! `fuse-shared-input` is a multi-pattern: two linears reading the same `?x`.
//! Its guard keeps the e-graph small and the result canonical: both weight
//! expressions must stack graph weights, every weight of `?w1` must come
//! before every weight of `?w2` (so each set of linears is fused in one
//! order, the graph's, and never with itself), and `?x` must have at least
//! `min_rows` rows (fusing GEMVs saves a launch but no bandwidth, and would
//! merge every modulation linear of the model into one).

use egg::{Applier, EGraph, Id, MultiPattern, PatternAst, Rewrite, Subst, Symbol, Var};

use super::lang::{Facts, LinearLang};

/// The rule set.
pub fn rules(min_rows: usize) -> Vec<Rewrite<LinearLang, Facts>> {
    let shared_input: MultiPattern<LinearLang> =
        "?a = (linear ?x ?w1 ?b1), ?b = (linear ?x ?w2 ?b2)"
            .parse()
            .expect("the multi-pattern is well formed");
    let nested_cols: egg::Pattern<LinearLang> = "(cols ?s1 ?l1 (cols ?s2 ?l2 ?t))"
        .parse()
        .expect("the pattern is well formed");
    vec![
        Rewrite::new("fuse-shared-input", shared_input, FuseLinears { min_rows })
            .expect("the rule is well formed"),
        Rewrite::new("cols-of-cols", nested_cols, ComposeCols).expect("the rule is well formed"),
    ]
}

fn var(name: &str) -> Var {
    name.parse().expect("a pattern variable")
}

/// Applies `fuse-shared-input` when its guard holds.
struct FuseLinears {
    min_rows: usize,
}

impl Applier<LinearLang, Facts> for FuseLinears {
    fn apply_one(
        &self,
        egraph: &mut EGraph<LinearLang, Facts>,
        _eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<LinearLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let [a, b, x, w1, b1, w2, b2] =
            ["?a", "?b", "?x", "?w1", "?b1", "?w2", "?b2"].map(|v| subst[var(v)]);
        let (s1, s2) = (&egraph[w1].data.stacked, &egraph[w2].data.stacked);
        let ordered = match (s1.last(), s2.first()) {
            (Some(last), Some(first)) => last < first,
            _ => false,
        };
        if !ordered || egraph[x].data.rows < self.min_rows {
            return Vec::new();
        }
        let (n1, n2) = (egraph[w1].data.width, egraph[w2].data.width);
        let w = egraph.add(LinearLang::Cat([w1, w2]));
        let bias = egraph.add(LinearLang::Cat([b1, b2]));
        let fused = egraph.add(LinearLang::Linear([x, w, bias]));
        let zero = egraph.add(LinearLang::Num(0));
        let n1_id = egraph.add(LinearLang::Num(n1));
        let n2_id = egraph.add(LinearLang::Num(n2));
        let first = egraph.add(LinearLang::Cols([zero, n1_id, fused]));
        let second = egraph.add(LinearLang::Cols([n1_id, n2_id, fused]));
        let mut changed = Vec::new();
        if egraph.union(a, first) {
            changed.push(first);
        }
        if egraph.union(b, second) {
            changed.push(second);
        }
        changed
    }
}

/// Applies `cols-of-cols`: offsets add up.
struct ComposeCols;

impl Applier<LinearLang, Facts> for ComposeCols {
    fn apply_one(
        &self,
        egraph: &mut EGraph<LinearLang, Facts>,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<LinearLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let [s1, l1, s2, t] = ["?s1", "?l1", "?s2", "?t"].map(|v| subst[var(v)]);
        let (Some(s1), Some(s2)) = (egraph[s1].data.num, egraph[s2].data.num) else {
            return Vec::new();
        };
        let start = egraph.add(LinearLang::Num(s1 + s2));
        let flat = egraph.add(LinearLang::Cols([start, l1, t]));
        if egraph.union(eclass, flat) {
            vec![flat]
        } else {
            Vec::new()
        }
    }
}
