//! Per-element code emission: the value of any pointwise-computable IR node
//! at a symbolic index, as CUDA C statements.
//!
//! A kernel body is built by asking for the value of each output at the
//! thread's index. Every op knows which element(s) of its operands it
//! needs — a broadcast drops or zeroes dimensions, a slice shifts one, a
//! reshape re-linearizes, a concat branches on the axis, `apply_rope` reads
//! the pair partner and the table — so values are pulled recursively down to
//! the kernel's parameters (materialized buffers), which are loaded. Values
//! are memoized per (node, index) within a scope, so a node read twice at
//! the same index is computed once. SSA names are short and deterministic
//! (`v12`, `t3`), so the emitted text is stable for snapshots.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use fluxc_ir::{BinaryOp, DType, Graph, NodeId, Op, UnaryOp};

use crate::buffers::{Buf, Temp};
use crate::lanes::{lane_offset, Lanes};
use crate::lower::storage_of;
use crate::CodegenError;

/// A multi-dimensional index: one C expression per dimension.
pub type Index = Vec<String>;

/// A kernel parameter: a buffer the kernel reads or writes, from a byte
/// offset into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// The buffer.
    pub buf: Buf,
    /// Whether the kernel writes it.
    pub written: bool,
    /// Bytes into the buffer where the kernel's view starts (a multiple of
    /// 16): a slice's start goes into the pointer rather than into the
    /// kernel text, so kernels that read different slices of equal shape
    /// (the same chunk of every block's modulation) are one kernel.
    pub offset: u64,
}

/// A block's effect on wide loads made inside it, which are issued before
/// the element loop (outside every block of it).
#[derive(Clone, Debug)]
enum Branch {
    /// A structural block (loops, bounds checks around the element loop).
    Plain,
    /// A branch taken or not for all lanes at once: wide loads inside are
    /// guarded by this condition (in before-the-loop terms); `part` when it
    /// is one part of a concat (the parts' conditions exclude each other).
    Uniform {
        cond: String,
        part: Option<ConcatPart>,
    },
    /// A branch that may differ between lanes: no wide loads inside.
    Divergent,
}

/// Part `part` of the concat numbered `concat` in a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConcatPart {
    concat: usize,
    part: usize,
}

/// One wide load: `var = guard ? fx_vload<w>(p{param}, base) : zeros`.
#[derive(Clone, Debug)]
struct WideLoad {
    param: usize,
    base: String,
    var: String,
    /// The concat part whose branch is the innermost of `guard`, if any.
    part: Option<ConcatPart>,
    guard: Vec<String>,
}

/// What is known inside one C block: computed values, and the index
/// variables already split from (or joined into) a linear index, so the same
/// element reached by two paths has the same index text and is computed once.
#[derive(Default)]
struct Scope {
    values: HashMap<(NodeId, String), String>,
    bound: HashMap<String, String>,
    split: HashMap<(String, Vec<usize>), Index>,
    joined: HashMap<(String, Vec<usize>), String>,
}

/// Builds one kernel body.
pub struct Emitter<'g> {
    graph: &'g Graph,
    /// Nodes computed in the kernel (everything else is loaded).
    computed: std::collections::HashSet<NodeId>,
    /// Parameters in order of first use.
    params: Vec<Param>,
    param_index: HashMap<(Buf, u64), usize>,
    lines: Vec<String>,
    indent: usize,
    next_var: usize,
    /// Concats emitted so far (numbers their parts' branches).
    next_concat: usize,
    scopes: Vec<Scope>,
    /// Values supplied by the surrounding template (a reduction's result at
    /// the current element), by node and index.
    provided: BTreeMap<(NodeId, String), String>,
    /// Values supplied by the template for every index (a row's
    /// quantization scale in a row kernel).
    provided_everywhere: BTreeMap<NodeId, String>,
    /// Vector mode: loads whose linear index is one of these variables are
    /// served from one wide load per thread at the variable's base
    /// (`i` → `i0`), element `v` of it.
    vector: BTreeMap<String, String>,
    /// Width of vector loads.
    vector_width: usize,
    /// Lane classes of index variables: with vectors wider than one
    /// element, any load at `base + v` (`base` aligned and the same for the
    /// whole loop) is a wide load too (`lanes.rs`).
    lanes: Lanes,
    /// What the data-dependent branches open around the current statement
    /// say about wide loads (innermost last).
    branches: Vec<Branch>,
    /// Wide loads requested since [`Emitter::take_vector_loads`].
    vector_loads: Vec<WideLoad>,
    /// GroupNorms computed from the `(mean, rstd)` pairs a statistics
    /// kernel left in a temporary.
    group_stats: HashMap<NodeId, Temp>,
    /// The C type of index variables: `int`, or `long long` in kernels
    /// over tensors of more than 2³¹ − 1 elements.
    index_type: &'static str,
}

impl<'g> Emitter<'g> {
    /// An emitter computing `computed` and loading everything else.
    pub fn new(
        graph: &'g Graph,
        computed: impl IntoIterator<Item = NodeId>,
        indent: usize,
    ) -> Self {
        Emitter {
            graph,
            computed: computed.into_iter().collect(),
            params: Vec::new(),
            param_index: HashMap::new(),
            lines: Vec::new(),
            indent,
            next_var: 0,
            next_concat: 0,
            scopes: vec![Scope::default()],
            provided: BTreeMap::new(),
            provided_everywhere: BTreeMap::new(),
            vector: BTreeMap::new(),
            vector_width: 1,
            lanes: Lanes::new(1),
            branches: Vec::new(),
            vector_loads: Vec::new(),
            group_stats: HashMap::new(),
            index_type: "int",
        }
    }

    /// Binds index variables as 64-bit integers from now on (for kernels
    /// over tensors of more than 2³¹ − 1 elements, such as a conv's patch
    /// matrix at 1024²).
    pub fn use_wide_indices(&mut self) {
        self.index_type = "long long";
    }

    /// The C type of index variables.
    pub fn index_type(&self) -> &'static str {
        self.index_type
    }

    /// Computes GroupNorm `node` from the `(mean, rstd)` pairs per (batch,
    /// group) in `stats` (see `group_norm.rs`).
    pub fn use_group_stats(&mut self, node: NodeId, stats: Temp) {
        self.group_stats.insert(node, stats);
    }

    /// Serves loads at linear index `var` (within an element loop over `v`)
    /// from `width`-element loads at `base`.
    pub fn vectorize(&mut self, var: &str, base: &str, width: usize) {
        self.vector.insert(var.to_string(), base.to_string());
        if width != self.vector_width {
            self.lanes = Lanes::new(width);
        }
        self.vector_width = width;
        self.lanes.stride(var, base);
    }

    /// The wide loads requested since the last call, as declarations. A
    /// load made inside uniform branches is guarded by their conditions
    /// (the other lanes' data may lie outside the buffer). The loads of the
    /// parts of one concat (one per part, one element type, the same outer
    /// guard) are one load from a pointer chosen by the parts' conditions:
    /// a thread's vector lies in exactly one part, so predicated loads of
    /// every part would issue the memory instructions of all of them.
    pub fn take_vector_loads(&mut self) -> Vec<String> {
        let width = self.vector_width;
        let loads = std::mem::take(&mut self.vector_loads);
        let mut out = Vec::new();
        let mut done = vec![false; loads.len()];
        for i in 0..loads.len() {
            if done[i] {
                continue;
            }
            let group = self.concat_group(&loads, i);
            if group.len() >= 2 {
                out.extend(self.chosen_load(&loads, &group));
                for &k in &group {
                    done[k] = true;
                }
                continue;
            }
            done[i] = true;
            let l = &loads[i];
            let load = format!("fx_vload<{width}>(p{}, {})", l.param, l.base);
            out.push(if l.guard.is_empty() {
                format!("const auto {} = {load};", l.var)
            } else {
                format!(
                    "const auto {} = ({}) ? {load} : decltype({load}){{}};",
                    l.var,
                    l.guard.join(") && (")
                )
            });
        }
        out
    }

    /// The loads that share one concat with `loads[i]` (its own index
    /// first, then the others in part order): one per part, one element
    /// type, the same guard outside the concat. Just `[i]` when there is
    /// nothing to share.
    fn concat_group(&self, loads: &[WideLoad], i: usize) -> Vec<usize> {
        let Some(part) = loads[i].part else {
            return vec![i];
        };
        let outer = |l: &WideLoad| l.guard[..l.guard.len() - 1].to_vec();
        let dtype = |l: &WideLoad| self.params[l.param].buf.dtype(self.graph);
        let mut group: Vec<usize> = (0..loads.len())
            .filter(|&k| {
                let l = &loads[k];
                l.part.is_some_and(|p| p.concat == part.concat)
                    && outer(l) == outer(&loads[i])
                    && dtype(l) == dtype(&loads[i])
            })
            .collect();
        let mut parts: Vec<usize> = group
            .iter()
            .map(|&k| loads[k].part.map_or(0, |p| p.part))
            .collect();
        parts.sort_unstable();
        parts.dedup();
        if parts.len() != group.len() {
            return vec![i]; // a part with two loads: keep them apart
        }
        group.sort_by_key(|&k| loads[k].part.map_or(0, |p| p.part));
        group
    }

    /// One load for the concat parts `group` (in part order): the pointer
    /// of the part whose condition holds, then the first part's variable,
    /// which the others alias.
    fn chosen_load(&self, loads: &[WideLoad], group: &[usize]) -> Vec<String> {
        let width = self.vector_width;
        let first = &loads[group[0]];
        let cond = |l: &WideLoad| l.guard[l.guard.len() - 1].clone();
        let mut pointer = String::new();
        for (n, &k) in group.iter().enumerate() {
            let l = &loads[k];
            let at = format!("p{} + ({})", l.param, l.base);
            if n + 1 == group.len() {
                pointer.push_str(&at);
            } else {
                pointer.push_str(&format!("({}) ? {at} : ", cond(l)));
            }
        }
        let mut guard = first.guard[..first.guard.len() - 1].to_vec();
        let any: Vec<String> = group.iter().map(|&k| cond(&loads[k])).collect();
        guard.push(format!("({})", any.join(") || (")));
        let var = &first.var;
        let load = format!("fx_vload<{width}>({var}_at, 0)");
        let mut lines = vec![
            format!("const auto* {var}_at = {pointer};"),
            format!(
                "const auto {var} = ({}) ? {load} : decltype({load}){{}};",
                guard.join(") && (")
            ),
        ];
        for &k in &group[1..] {
            lines.push(format!("const auto& {} = {var};", loads[k].var));
        }
        lines
    }

    /// The guard of a wide load made here, or `None` when a divergent
    /// branch forbids one, and the concat part of its innermost condition.
    fn load_guard(&self) -> Option<(Vec<String>, Option<ConcatPart>)> {
        let mut guard = Vec::new();
        let mut innermost = None;
        for b in &self.branches {
            match b {
                Branch::Plain => {}
                Branch::Uniform { cond, part } => {
                    guard.push(cond.clone());
                    innermost = *part;
                }
                Branch::Divergent => return None,
            }
        }
        Some((guard, innermost))
    }

    /// Number of statements emitted so far (a position for [`Emitter::insert`]).
    pub fn mark(&self) -> usize {
        self.lines.len()
    }

    /// Inserts statements at `mark`, at the indentation of the line there.
    pub fn insert(&mut self, mark: usize, statements: Vec<String>) {
        let indent = self.lines.get(mark).map_or(String::new(), |l| {
            l.chars().take_while(|c| *c == ' ').collect()
        });
        for (k, s) in statements.into_iter().enumerate() {
            self.lines.insert(mark + k, format!("{indent}{s}"));
        }
    }

    /// The parameters used so far.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The statements emitted so far.
    pub fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }

    /// Emits a raw statement at the current indentation.
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.lines
            .push(format!("{}{}", "    ".repeat(self.indent), text.as_ref()));
    }

    /// Opens a C block (`if (...) {`); statements go one level deeper, and
    /// values computed inside are forgotten when it closes.
    pub fn open(&mut self, header: impl AsRef<str>) {
        self.open_block(header.as_ref(), Branch::Plain);
    }

    /// Opens a data-dependent branch `keyword (cond)` (`keyword` alone for a
    /// final `else`, `cond` `None`): `uniform` is its condition evaluated
    /// once for all lanes when it is the same for every lane, `None` when it
    /// may differ. A uniform branch tests that before-the-loop form, so the
    /// per-element index in `cond` need not be computed (in the largest
    /// im2col patch matrices, 64-bit divisions per element).
    fn open_branch(
        &mut self,
        keyword: &str,
        cond: Option<String>,
        uniform: Option<String>,
        part: Option<ConcatPart>,
    ) {
        let header = match cond.map(|c| uniform.clone().unwrap_or(c)) {
            Some(test) => format!("{keyword} ({test})"),
            None => keyword.to_string(),
        };
        let branch = uniform.map_or(Branch::Divergent, |cond| Branch::Uniform { cond, part });
        self.open_block(&header, branch);
    }

    fn open_block(&mut self, header: &str, branch: Branch) {
        self.line(format!("{header} {{"));
        self.indent += 1;
        self.scopes.push(Scope::default());
        self.branches.push(branch);
    }

    /// Closes the innermost block.
    pub fn close(&mut self) {
        self.scopes.pop();
        self.branches.pop();
        self.indent -= 1;
        self.line("}");
    }

    /// A fresh variable name with `prefix`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}{}", self.next_var);
        self.next_var += 1;
        name
    }

    /// Binds an integer index expression to a variable unless it is
    /// trivial; the same expression in a scope binds to the same variable.
    pub fn bind_index(&mut self, expr: String) -> String {
        if is_simple(&expr) {
            return expr;
        }
        if let Some(v) = self.scopes.iter().rev().find_map(|s| s.bound.get(&expr)) {
            return v.clone();
        }
        let name = self.fresh("t");
        self.line(format!("const {} {name} = {expr};", self.index_type));
        self.lanes.bind(&name, &expr);
        self.scope().bound.insert(expr, name.clone());
        name
    }

    /// Declares that index expression `expr` equals variable `var` in the
    /// current scope (`i % C` is the row position `c` in a row kernel), so
    /// indices built from it use the variable.
    pub fn alias_index(&mut self, expr: &str, var: &str) {
        self.scope().bound.insert(expr.to_string(), var.to_string());
    }

    /// Makes `value` the value of `node` at `index` (used for a reduction's
    /// per-element result in row kernels).
    pub fn provide(&mut self, node: NodeId, index: &Index, value: String) {
        self.provided.insert((node, index.join(",")), value);
    }

    /// Makes `value` the value of `node` at every index (a per-row scale in
    /// a row kernel, where every element the thread touches is in its row).
    pub fn provide_everywhere(&mut self, node: NodeId, value: String) {
        self.provided_everywhere.insert(node, value);
    }

    /// The parameter slot of `node`'s buffer, registering it on first use.
    pub fn param(&mut self, node: NodeId, written: bool) -> usize {
        self.param_buf(Buf::Node(node), written)
    }

    /// The parameter slot of `buf`, registering it on first use.
    pub fn param_buf(&mut self, buf: Buf, written: bool) -> usize {
        self.param_at(buf, written, 0)
    }

    /// The parameter slot of `buf` seen from `offset` bytes in.
    fn param_at(&mut self, buf: Buf, written: bool, offset: u64) -> usize {
        if let Some(&i) = self.param_index.get(&(buf, offset)) {
            self.params[i].written |= written;
            return i;
        }
        self.params.push(Param {
            buf,
            written,
            offset,
        });
        self.param_index
            .insert((buf, offset), self.params.len() - 1);
        self.params.len() - 1
    }

    /// Stores `value` into `node`'s buffer at linear index `linear`.
    pub fn store(&mut self, node: NodeId, linear: &str, value: &str) {
        let p = self.param(node, true);
        self.line(format!("fx_store(p{p}, {linear}, {value});"));
    }

    /// The value to store into `id`'s own buffer at `index`: [`Self::value`],
    /// except that a `quantize` computed here is left unrounded, because
    /// the fp8 store rounds it the same way (round to nearest even,
    /// saturating) and rounding twice would only cost conversions.
    pub fn stored_value(&mut self, id: NodeId, index: &Index) -> Result<String, CodegenError> {
        let quantize = matches!(
            self.graph.node(id).op,
            Op::Quantize(DType::F8E4M3 | DType::F8E5M2)
        );
        if !quantize || !self.computed.contains(&id) || self.provided_everywhere.contains_key(&id) {
            return self.value(id, index);
        }
        let operands = self.graph.operands(id);
        let out_dims = self.graph.ty(id).shape.dims().to_vec();
        let a = self.value(operands[0], index)?;
        let is = self.broadcast(index, &out_dims, operands[1]);
        let scale = self.value(operands[1], &is)?;
        Ok(format!("fx_mul_rcp({a}, {scale})"))
    }

    /// The f32 value of `id` at `index` (an index over `id`'s shape), as a
    /// variable name or literal.
    pub fn value(&mut self, id: NodeId, index: &Index) -> Result<String, CodegenError> {
        if let Some(v) = self.provided_everywhere.get(&id) {
            return Ok(v.clone());
        }
        let key = (id, index.join(","));
        if let Some(v) = self.provided.get(&key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.scopes.iter().rev().find_map(|s| s.values.get(&key)) {
            return Ok(v.clone());
        }
        let node = self.graph.node(id);
        let value = if let Op::Reshape(_) = node.op {
            // A view: same elements, re-linearized.
            let operand = self.graph.operands(id)[0];
            let linear = self.linear(index, node.ty.shape.dims());
            let inner = self.delinearize(&linear, self.graph.ty(operand).shape.dims().to_vec());
            return self.value(operand, &inner);
        } else if !self.computed.contains(&id) {
            let linear = self.linear(index, node.ty.shape.dims());
            return Ok(self.load(id, key, linear, 0));
        } else {
            self.compute(id, index)?
        };
        self.scope().values.insert(key, value.clone());
        Ok(value)
    }

    /// The value of buffer `id` (not computed here) at `linear`, counted
    /// from `offset` bytes in, memoized under `key`: an element of a wide
    /// load when the lane analysis allows one, else a scalar load.
    fn load(&mut self, id: NodeId, key: (NodeId, String), linear: String, offset: u64) -> String {
        let p = self.param_at(Buf::Node(id), false, offset);
        let pick = match self.vector.get(&linear) {
            Some(base) => Some((base.clone(), "v".to_string())),
            None => self.lanes.classify(&linear).and_then(|lane| {
                let (base, map) = lane.wide_load(self.vector_width)?;
                Some((base.to_string(), lane_offset(map)))
            }),
        };
        let value = if let (Some((base, lane)), Some((guard, part))) = (pick, self.load_guard()) {
            // One wide load per (buffer, base, guard): a pair partner or a
            // table entry read at the same base picks other lanes of it.
            let var = match self
                .vector_loads
                .iter()
                .find(|l| l.param == p && l.base == base && l.guard == guard)
            {
                Some(l) => l.var.clone(),
                None => {
                    let var = format!("r{p}_{linear}");
                    self.vector_loads.push(WideLoad {
                        param: p,
                        base,
                        var: var.clone(),
                        part,
                        guard,
                    });
                    var
                }
            };
            format!("fx_vget<{}>({var}, {lane})", self.vector_width)
        } else {
            let v = self.fresh("v");
            self.line(format!("const float {v} = fx_load(p{p}, {linear});"));
            v
        };
        self.scope().values.insert(key, value.clone());
        value
    }

    /// Whether `id` is read from its buffer here (not computed, not
    /// supplied by the template).
    fn is_loaded(&self, id: NodeId) -> bool {
        !self.computed.contains(&id)
            && !self.provided_everywhere.contains_key(&id)
            && !self.provided.keys().any(|(n, _)| *n == id)
    }

    fn scope(&mut self) -> &mut Scope {
        self.scopes.last_mut().expect("a scope is always open")
    }

    /// The linear index of `index` over `dims`, bound to a variable (the
    /// variable it was split from, when it was).
    pub fn linear(&mut self, index: &Index, dims: &[usize]) -> String {
        let key = (index.join(","), dims.to_vec());
        if let Some(l) = self.scopes.iter().rev().find_map(|s| s.joined.get(&key)) {
            return l.clone();
        }
        let linear = self.bind_index(linearize(index, dims));
        self.scope().joined.insert(key, linear.clone());
        linear
    }

    /// Splits a linear index into an index over `shape` (the same variables
    /// every time within a scope).
    pub fn delinearize(&mut self, linear: &str, shape: Vec<usize>) -> Index {
        let key = (linear.to_string(), shape.clone());
        if let Some(i) = self.scopes.iter().rev().find_map(|s| s.split.get(&key)) {
            return i.clone();
        }
        let mut index = Vec::with_capacity(shape.len());
        let mut stride: usize = shape.iter().product();
        for (k, &d) in shape.iter().enumerate() {
            stride /= d.max(1);
            let expr = if d == 1 {
                "0".to_string()
            } else if k == 0 && stride == 1 {
                linear.to_string()
            } else if k == 0 {
                format!("{linear} / {stride}")
            } else if stride == 1 {
                format!("{linear} % {d}")
            } else {
                format!("{linear} / {stride} % {d}")
            };
            index.push(self.bind_index(expr));
        }
        let scope = self.scope();
        scope.split.insert(key, index.clone());
        scope
            .joined
            .insert((index.join(","), shape), linear.to_string());
        index
    }

    fn compute(&mut self, id: NodeId, index: &Index) -> Result<String, CodegenError> {
        let node = self.graph.node(id).clone();
        let operands = self.graph.operands(id);
        let out_dims = node.ty.shape.dims().to_vec();
        let expr = match &node.op {
            Op::Unary(u) => {
                let a = self.value(operands[0], index)?;
                unary(*u, &a, node.ty.dtype)
            }
            Op::Binary(b) => {
                let ia = self.broadcast(index, &out_dims, operands[0]);
                let a = self.value(operands[0], &ia)?;
                let ib = self.broadcast(index, &out_dims, operands[1]);
                let bv = self.value(operands[1], &ib)?;
                binary(*b, &a, &bv)
            }
            Op::BinaryScalar { op, scalar } => {
                let a = self.value(operands[0], index)?;
                binary(*op, &a, &float_literal(scalar.get()))
            }
            Op::Cast(dtype) => {
                let a = self.value(operands[0], index)?;
                match dtype {
                    DType::F32 => a,
                    DType::BF16 => format!("fx_round_bf16({a})"),
                    DType::F16 => format!("fx_round_f16({a})"),
                    DType::F8E4M3 | DType::F8E5M2 => format!("fx_round_{}({a})", dtype.name()),
                    other => return Err(unsupported(&node.op, &format!("cast to {other}"))),
                }
            }
            Op::Quantize(dtype) => {
                let a = self.value(operands[0], index)?;
                let is = self.broadcast(index, &out_dims, operands[1]);
                let scale = self.value(operands[1], &is)?;
                match dtype {
                    DType::F8E4M3 | DType::F8E5M2 => {
                        format!("fx_round_{}(fx_mul_rcp({a}, {scale}))", dtype.name())
                    }
                    other => return Err(unsupported(&node.op, &format!("to {other}"))),
                }
            }
            Op::Slice { axis, start, .. } => {
                // A slice of a buffer read here whose start is a 16-byte
                // multiple: the start goes into the parameter's pointer.
                let x = operands[0];
                let storage = storage_of(self.graph, x);
                if self.is_loaded(storage) {
                    let x_dims = self.graph.ty(x).shape.dims().to_vec();
                    let stride: usize = x_dims[axis + 1..].iter().product();
                    let elem = self.graph.ty(storage).dtype.size_bytes();
                    let bytes = (start * stride * elem) as u64;
                    if bytes % 16 == 0 {
                        let linear = self.linear(index, &x_dims);
                        return Ok(self.load(storage, (id, index.join(",")), linear, bytes));
                    }
                }
                let mut inner = index.clone();
                inner[*axis] = self.bind_index(format!("{} + {start}", index[*axis]));
                return self.value(operands[0], &inner);
            }
            Op::Permute(perm) => {
                let mut inner = vec![String::new(); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inner[p] = index[i].clone();
                }
                return self.value(operands[0], &inner);
            }
            Op::UpsampleNearest { scale } => {
                let mut inner = index.clone();
                for axis in [1, 2] {
                    inner[axis] = self.bind_index(format!("{} / {scale}", index[axis]));
                }
                return self.value(operands[0], &inner);
            }
            Op::Concat { axis } => return self.concat(&operands, *axis, index),
            Op::GroupNorm { groups, .. } => {
                return self.group_norm(id, &operands, *groups, index);
            }
            Op::Im2col {
                kernel,
                stride,
                padding,
            } => return self.im2col(operands[0], *kernel, *stride, *padding, index),
            Op::ApplyRope => return self.apply_rope(operands[0], operands[1], index),
            Op::RopeTable { axes_dim, theta } => {
                return self.rope_table(operands[0], axes_dim, theta.get(), index)
            }
            Op::TimestepEmbedding(p) => {
                let half = p.dim / 2;
                let t = self.value(operands[0], &vec![index[0].clone()])?;
                let j = &index[1];
                let k = self.bind_index(format!("({j} < {half} ? {j} : {j} - {half})"));
                let first_is_cos = p.flip_sin_to_cos;
                let v = self.fresh("v");
                self.line(format!(
                    "const float {v}_f = expf({} * (float){k} / {});",
                    float_literal(-(p.max_period.get() as f64).ln() as f32),
                    float_literal(half as f32 - p.downscale_freq_shift.get())
                ));
                self.line(format!(
                    "const float {v}_a = {} * ({t} * {v}_f);",
                    float_literal(p.scale.get())
                ));
                let (first, second) = if first_is_cos {
                    ("cosf", "sinf")
                } else {
                    ("sinf", "cosf")
                };
                self.line(format!(
                    "const float {v} = {j} < {half} ? {first}({v}_a) : {second}({v}_a);"
                ));
                return Ok(v);
            }
            other => return Err(unsupported(other, "in a pointwise kernel")),
        };
        let v = self.fresh("v");
        self.line(format!("const float {v} = {expr};"));
        Ok(v)
    }

    /// The index into `operand` that numpy broadcasting reads for `index`
    /// over `out_dims`.
    fn broadcast(&mut self, index: &Index, out_dims: &[usize], operand: NodeId) -> Index {
        let dims = self.graph.ty(operand).shape.dims();
        let offset = out_dims.len() - dims.len();
        dims.iter()
            .enumerate()
            .map(|(k, &d)| {
                if d == 1 {
                    "0".to_string()
                } else {
                    index[k + offset].clone()
                }
            })
            .collect()
    }

    fn concat(
        &mut self,
        parts: &[NodeId],
        axis: usize,
        index: &Index,
    ) -> Result<String, CodegenError> {
        let v = self.fresh("v");
        self.line(format!("float {v};"));
        let concat = self.next_concat;
        self.next_concat += 1;
        let mut offset = 0;
        for (n, &part) in parts.iter().enumerate() {
            let len = self.graph.ty(part).shape.dims()[axis];
            let uniform = self.lanes.uniform_range(&index[axis], offset, offset + len);
            let (keyword, cond) = chain_link(n, parts.len(), || {
                format!("{} < {}", index[axis], offset + len)
            });
            self.open_branch(keyword, cond, uniform, Some(ConcatPart { concat, part: n }));
            let mut inner = index.clone();
            if offset > 0 {
                inner[axis] = self.bind_index(format!("{} - {offset}", index[axis]));
            }
            let value = self.value(part, &inner)?;
            self.line(format!("{v} = {value};"));
            self.close();
            offset += len;
        }
        Ok(v)
    }

    /// GroupNorm `id` at `[n, h, w, c]`: `(x − mean)·rstd·weight[c] +
    /// bias[c]` with the statistics of `c`'s group in batch `n`.
    fn group_norm(
        &mut self,
        id: NodeId,
        operands: &[NodeId],
        groups: usize,
        index: &Index,
    ) -> Result<String, CodegenError> {
        let Some(&stats) = self.group_stats.get(&id) else {
            return Err(CodegenError::Invalid(
                "a group_norm in a kernel without its statistics".into(),
            ));
        };
        let c = self.graph.ty(id).shape.dims()[3];
        let per_group = c / groups;
        let channel = &index[3];
        let group = if per_group == 1 {
            channel.clone()
        } else {
            self.bind_index(format!("{channel} / {per_group}"))
        };
        let at = self.bind_index(linearize(
            &vec![index[0].clone(), group, "0".into()],
            &[usize::MAX, groups, 2],
        ));
        let p = self.param_buf(Buf::Temp(stats), false);
        let x = self.value(operands[0], index)?;
        let w = self.value(operands[1], &vec![channel.clone()])?;
        let b = self.value(operands[2], &vec![channel.clone()])?;
        let v = self.fresh("v");
        self.line(format!(
            "const float {v} = (({x} - fx_load(p{p}, {at})) * fx_load(p{p}, {at} + 1)) * {w} + {b};"
        ));
        Ok(v)
    }

    /// Element `[n, oy, ox, col]` of the patches of `x` `[N, H, W, C]`:
    /// `x[n, oy·sh − ph + ky, ox·sw − pw + kx, c]` where column `col` is
    /// `(ky·KW + kx)·C + c`, or 0 in the padding. With `C` a multiple of the
    /// vector width the tap, and so the bounds test, is the same for every
    /// lane, and the channels load as one wide load guarded by it.
    fn im2col(
        &mut self,
        x: NodeId,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        index: &Index,
    ) -> Result<String, CodegenError> {
        let dims = self.graph.ty(x).shape.dims().to_vec();
        let (h, w, c) = (dims[1], dims[2], dims[3]);
        let col = &index[3];
        let (tap, channel) = if c == 1 {
            (col.clone(), "0".to_string())
        } else {
            (
                self.bind_index(format!("{col} / {c}")),
                self.bind_index(format!("{col} % {c}")),
            )
        };
        let (ky, kx) = match kernel {
            [_, 1] => (tap, "0".to_string()),
            [1, _] => ("0".to_string(), tap),
            [_, kw] => (
                self.bind_index(format!("{tap} / {kw}")),
                self.bind_index(format!("{tap} % {kw}")),
            ),
        };
        let iy = self.bind_index(window_position(&index[1], stride[0], &ky, padding[0]));
        let ix = self.bind_index(window_position(&index[2], stride[1], &kx, padding[1]));
        let inside = |y: &str, x: &str| format!("{y} >= 0 && {y} < {h} && {x} >= 0 && {x} < {w}");
        let uniform = match (self.lanes.uniform(&iy), self.lanes.uniform(&ix)) {
            (Some(y), Some(x)) => Some(inside(&y, &x)),
            _ => None,
        };
        let v = self.fresh("v");
        self.line(format!("float {v} = 0.0f;"));
        self.open_branch("if", Some(inside(&iy, &ix)), uniform, None);
        let value = self.value(x, &vec![index[0].clone(), iy, ix, channel])?;
        self.line(format!("{v} = {value};"));
        self.close();
        Ok(v)
    }

    /// `x` rotated by the table's angle for its pair: even elements
    /// `x·cos − partner·sin`, odd ones `x·cos + partner·sin`.
    fn apply_rope(
        &mut self,
        x: NodeId,
        table: NodeId,
        index: &Index,
    ) -> Result<String, CodegenError> {
        let d = index[3].clone();
        let pair = self.bind_index(format!("{d} / 2"));
        let cos = self.value(table, &vec![index[1].clone(), pair.clone(), "0".into()])?;
        let sin = self.value(table, &vec![index[1].clone(), pair, "1".into()])?;
        let own = self.value(x, index)?;
        let mut partner_index = index.clone();
        partner_index[3] = self.bind_index(format!("{d} ^ 1"));
        let partner = self.value(x, &partner_index)?;
        let v = self.fresh("v");
        self.line(format!(
            "const float {v} = ({d} & 1) ? {own} * {cos} + {partner} * {sin} : {own} * {cos} - {partner} * {sin};"
        ));
        Ok(v)
    }

    /// Element `(s, pair, cos|sin)` of a rotary table, computed in double as
    /// diffusers' `FluxPosEmbed` does.
    fn rope_table(
        &mut self,
        ids: NodeId,
        axes_dim: &[usize],
        theta: f32,
        index: &Index,
    ) -> Result<String, CodegenError> {
        let (s, pair, which) = (&index[0], &index[1], &index[2]);
        let v = self.fresh("v");
        self.line(format!("double {v}_angle;"));
        let mut first_pair = 0;
        for (axis, &dim) in axes_dim.iter().enumerate() {
            let pairs = dim / 2;
            let (keyword, cond) = chain_link(axis, axes_dim.len(), || {
                format!("{pair} < {}", first_pair + pairs)
            });
            self.open_branch(keyword, cond, None, None);
            let pos = self.value(ids, &vec![s.clone(), axis.to_string()])?;
            let mut line = String::new();
            write!(
                line,
                "{v}_angle = (double){pos} * (1.0 / pow({:?}, (double)(2 * ({pair} - {first_pair})) / {dim}.0));",
                theta as f64
            )
            .unwrap();
            self.line(line);
            self.close();
            first_pair += pairs;
        }
        self.line(format!(
            "const float {v} = (float)({which} == 0 ? cos({v}_angle) : sin({v}_angle));"
        ));
        Ok(v)
    }
}

/// Link `n` of an `if` / `else if` / `else` chain of `len` links: its
/// keyword and, except for the final `else`, its condition.
fn chain_link(
    n: usize,
    len: usize,
    cond: impl FnOnce() -> String,
) -> (&'static str, Option<String>) {
    if n == 0 {
        ("if", Some(cond()))
    } else if n + 1 == len {
        ("else", None)
    } else {
        ("else if", Some(cond()))
    }
}

/// The input position `out·stride + tap − pad` a window tap reads.
fn window_position(out: &str, stride: usize, tap: &str, pad: usize) -> String {
    let mut expr = match (out, stride) {
        ("0", _) => String::new(),
        (o, 1) => o.to_string(),
        (o, s) => format!("{o} * {s}"),
    };
    if tap != "0" {
        expr = if expr.is_empty() {
            tap.to_string()
        } else {
            format!("{expr} + {tap}")
        };
    }
    match (expr.is_empty(), pad) {
        (true, 0) => "0".to_string(),
        (true, p) => format!("-{p}"),
        (false, 0) => expr,
        (false, p) => format!("{expr} - {p}"),
    }
}

/// `index` over `dims` as one row-major linear index expression.
pub fn linearize(index: &Index, dims: &[usize]) -> String {
    let mut expr = String::new();
    for (k, (i, &d)) in index.iter().zip(dims).enumerate() {
        if k == 0 {
            expr = i.clone();
        } else if d == 1 {
            continue; // the index of a unit dim is 0
        } else if expr == "0" {
            expr = i.clone();
        } else if i == "0" {
            expr = format!("({expr}) * {d}");
        } else {
            expr = format!("({expr}) * {d} + {i}");
        }
    }
    if expr.is_empty() {
        "0".to_string()
    } else {
        expr
    }
}

fn is_simple(expr: &str) -> bool {
    expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `op` of `a`, for a value typed `dtype`: tanh-based ops of 16-bit values
/// use the hardware tanh, whose error is below their rounding.
fn unary(op: UnaryOp, a: &str, dtype: DType) -> String {
    let half = matches!(dtype, DType::BF16 | DType::F16);
    match op {
        UnaryOp::Neg => format!("-{a}"),
        UnaryOp::Abs => format!("fabsf({a})"),
        UnaryOp::Exp => format!("expf({a})"),
        UnaryOp::Log => format!("logf({a})"),
        UnaryOp::Sqrt => format!("sqrtf({a})"),
        UnaryOp::Rsqrt => format!("rsqrtf({a})"),
        UnaryOp::Recip => format!("1.0f / {a}"),
        UnaryOp::Square => format!("{a} * {a}"),
        UnaryOp::Sin => format!("sinf({a})"),
        UnaryOp::Cos => format!("cosf({a})"),
        UnaryOp::Tanh if half => format!("fx_tanh_approx({a})"),
        UnaryOp::Tanh => format!("tanhf({a})"),
        UnaryOp::Sigmoid => format!("fx_sigmoid({a})"),
        UnaryOp::Silu => format!("fx_silu({a})"),
        UnaryOp::GeluTanh if half => format!("fx_gelu_tanh_approx({a})"),
        UnaryOp::GeluTanh => format!("fx_gelu_tanh({a})"),
    }
}

fn binary(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("{a} + {b}"),
        BinaryOp::Sub => format!("{a} - {b}"),
        BinaryOp::Mul => format!("{a} * {b}"),
        BinaryOp::Div => format!("{a} / {b}"),
        BinaryOp::Max => format!("fmaxf({a}, {b})"),
        BinaryOp::Min => format!("fminf({a}, {b})"),
    }
}

/// A C float literal that reads back as exactly `x`.
pub fn float_literal(x: f32) -> String {
    if x.is_finite() {
        let text = format!("{x:?}");
        if text.contains(['.', 'e']) {
            format!("{text}f")
        } else {
            format!("{text}.0f")
        }
    } else {
        format!("__int_as_float({:#x})", x.to_bits())
    }
}

fn unsupported(op: &Op, context: &str) -> CodegenError {
    CodegenError::Unsupported(format!("{} {context}", op.kind_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_exactly() {
        assert_eq!(float_literal(1.0), "1.0f");
        assert_eq!(float_literal(1e-6), "1e-6f");
        assert_eq!(float_literal(1000.0), "1000.0f");
        assert_eq!(float_literal(f32::INFINITY), "__int_as_float(0x7f800000)");
    }

    #[test]
    fn linear_index_skips_unit_dims() {
        let idx = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            linearize(&idx(&["0", "i1", "i2"]), &[1, 4, 8]),
            "(i1) * 8 + i2"
        );
        assert_eq!(linearize(&idx(&["a", "0"]), &[3, 1]), "a");
        assert_eq!(
            linearize(&idx(&["a", "0", "b"]), &[3, 2, 5]),
            "((a) * 2) * 5 + b"
        );
    }
}
