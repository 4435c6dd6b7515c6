//! Lane analysis of index expressions in vectorized element loops.
//!
//! A vectorized kernel computes `w` consecutive elements per thread in a loop
//! over `v` (`i = i0 + v`, `c = c0 + v`, with `i0` and `c0` multiples of
//! `w`). A load is one wide load when the element it reads is `base +
//! m(v)` for a `base` that is the same for the whole loop and a multiple of
//! `w`, and lane offsets `m(v)` below `w`: then elements `base .. base + w`
//! are read at once, aligned, and lane `v` takes element `m(v)` of them.
//! Usually `m(v) = v`; `apply_rope` reads its pair partner at `v ^ 1` and
//! its table's cosines at `v & !1` (one table entry per pair of lanes), so
//! those become element picks from wide loads too instead of scalar loads,
//! which kept the load/store unit busy in the rope kernels. This module
//! decides all that from the index expressions the emitter builds (`i /
//! 3072 % 4608`, `(t3) * 224 + t8`, `c - 32`, `t2 ^ 1`, ...), by parsing them
//! and tracking, for every index variable, its *lane class*:
//!
//! - [`Lane::Uniform`]: the same for every `v` (a row index, `i / 3072` when
//!   3072 is a multiple of `w`), with its value written in terms of
//!   variables defined before the loop;
//! - [`Lane::Stride`]: `base + map[v]`, `base` in before-the-loop terms.
//!
//! Both carry a known divisor of `base` (`align`; 0 when `base` is 0), so
//! `(c / 2) * 2 + 1` is known to be `c0 + [1, 1, 3, 3, ...]` with `c0` a
//! multiple of `w`. Anything else (a product of `v`-dependent terms, a
//! ternary, a division that may split a vector) is unknown, and its loads
//! stay scalar. A branch condition `x < bound` with `x` strided and `bound`
//! a multiple of `w` is the same for every `v` of the loop; evaluated on
//! `x`'s base it guards the wide loads made inside the branch (so a concat
//! whose parts are multiples of `w` wide loads each part with one wide load).

use std::collections::HashMap;

/// How an index expression varies over the lanes `v` of a vectorized loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The same value for every `v`.
    Uniform {
        /// The value, in terms of variables defined before the loop.
        base: String,
        /// A known divisor of the value (0: the value is 0).
        align: usize,
    },
    /// `base + map[v]`.
    Stride {
        /// The value at offset 0, in terms of variables defined before the loop.
        base: String,
        /// A known divisor of `base` (0: `base` is 0).
        align: usize,
        /// The offset of lane `v` from `base`, for each `v < w`.
        map: Vec<usize>,
    },
}

impl Lane {
    /// The base and lane offsets of a wide load of `width` elements serving
    /// every lane: `base` a multiple of `width`, offsets below it.
    pub fn wide_load(&self, width: usize) -> Option<(&str, &[usize])> {
        match self {
            Lane::Stride { base, align, map }
                if align % width == 0 && map.iter().all(|&m| m < width) =>
            {
                Some((base, map))
            }
            _ => None,
        }
    }
}

/// The C expression for lane offset `map[v]` inside an unrolled loop over
/// `v` (folded to a constant per lane by the compiler).
pub fn lane_offset(map: &[usize]) -> String {
    if map.iter().enumerate().all(|(v, &m)| m == v) {
        return "v".to_string();
    }
    if let Some(k) = (1..16).find(|k| map.iter().enumerate().all(|(v, &m)| m == v ^ k)) {
        return format!("(v ^ {k})");
    }
    // Offsets below 16, four bits per lane.
    let packed = map
        .iter()
        .enumerate()
        .fold(0u64, |acc, (v, &m)| acc | ((m as u64) << (4 * v)));
    format!("(int)(({packed:#x}ull >> (4 * v)) & 15)")
}

/// Lane classes of the index variables of one kernel.
#[derive(Debug, Default)]
pub struct Lanes {
    width: usize,
    known: HashMap<String, Lane>,
}

impl Lanes {
    /// An analysis for vectors of `width` elements (classifies nothing when
    /// `width` is 1).
    pub fn new(width: usize) -> Lanes {
        Lanes {
            width,
            known: HashMap::new(),
        }
    }

    /// Whether the analysis is on (vectors wider than one element).
    pub fn active(&self) -> bool {
        self.width > 1
    }

    /// Declares `var` to be `base + v` (`base` a multiple of the width,
    /// defined before the loop), and `base` uniform and aligned.
    pub fn stride(&mut self, var: &str, base: &str) {
        self.known.insert(
            var.to_string(),
            Lane::Stride {
                base: base.to_string(),
                align: self.width,
                map: (0..self.width).collect(),
            },
        );
        self.known.insert(
            base.to_string(),
            Lane::Uniform {
                base: base.to_string(),
                align: self.width,
            },
        );
    }

    /// Records that variable `var` was bound to `expr`.
    pub fn bind(&mut self, var: &str, expr: &str) {
        if let Some(lane) = self.classify(expr) {
            self.known.insert(var.to_string(), lane);
        }
    }

    /// The lane class of `expr` (a variable, a literal or an expression).
    pub fn classify(&self, expr: &str) -> Option<Lane> {
        if !self.active() {
            return None;
        }
        let ast = parse(expr)?;
        self.eval(&ast)
    }

    /// `expr`'s value in before-the-loop terms when it is the same for every
    /// `v`; `None` otherwise (or when the analysis is off).
    pub fn uniform(&self, expr: &str) -> Option<String> {
        match self.classify(expr)? {
            Lane::Uniform { base, .. } => Some(base),
            Lane::Stride { .. } => None,
        }
    }

    /// The condition `start <= expr < end` evaluated once for the whole
    /// loop, when it is the same for every `v`; `None` otherwise.
    pub fn uniform_range(&self, expr: &str, start: usize, end: usize) -> Option<String> {
        let w = self.width;
        let lane = self.classify(expr)?;
        let base = match &lane {
            Lane::Uniform { base, .. } => base.clone(),
            Lane::Stride { .. } if start % w == 0 && end % w == 0 => {
                lane.wide_load(w)?.0.to_string()
            }
            Lane::Stride { .. } => return None,
        };
        Some(if start == 0 {
            format!("{base} < {end}")
        } else {
            format!("{base} >= {start} && {base} < {end}")
        })
    }

    fn eval(&self, e: &Expr) -> Option<Lane> {
        use Lane::{Stride, Uniform};
        let uniform = |base: String, align: usize| Some(Uniform { base, align });
        match e {
            Expr::Int(n) => uniform(n.to_string(), *n),
            Expr::Var(name) => match self.known.get(name) {
                Some(lane) => Some(lane.clone()),
                // Loop variables and unclassified bound indices vary.
                None if name == "v" || name == "i" || name == "c" || is_bound_index(name) => None,
                // Everything else (row, lane, k, chunk, i0, c0) is defined
                // before the loop.
                None => uniform(name.clone(), 1),
            },
            Expr::Bin(op, a, b) => {
                let literal = match **b {
                    Expr::Int(k) => Some(k),
                    _ => None,
                };
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                match (*op, a, b) {
                    (op, Uniform { base: x, align: ax }, Uniform { base: y, align: ay }) => {
                        let align = match op {
                            '+' | '-' => gcd(ax, ay),
                            '*' => ax.saturating_mul(ay),
                            '/' => literal
                                .filter(|&k| k > 0 && ax % k == 0)
                                .map_or(1, |k| ax / k),
                            '%' => literal.map_or(1, |k| gcd(ax, k)),
                            _ => 1,
                        };
                        uniform(format!("({x} {op} {y})"), align)
                    }
                    // A small literal moves the lanes, not the base (so that
                    // `2 * pair + 1` still loads from the pair's aligned base).
                    ('+', Stride { base, align, map }, Uniform { .. })
                        if literal.is_some_and(|k| k < self.width) =>
                    {
                        let k = literal.unwrap_or(0);
                        Some(Stride {
                            base,
                            align,
                            map: map.iter().map(|m| m + k).collect(),
                        })
                    }
                    (
                        '+',
                        Stride {
                            base: x,
                            align: ax,
                            map,
                        },
                        Uniform { base: y, align: ay },
                    )
                    | (
                        '+',
                        Uniform { base: y, align: ay },
                        Stride {
                            base: x,
                            align: ax,
                            map,
                        },
                    ) => Some(Stride {
                        base: format!("({x} + {y})"),
                        align: gcd(ax, ay),
                        map,
                    }),
                    (
                        '-',
                        Stride {
                            base: x,
                            align: ax,
                            map,
                        },
                        Uniform { base: y, align: ay },
                    ) => Some(Stride {
                        base: format!("({x} - {y})"),
                        align: gcd(ax, ay),
                        map,
                    }),
                    ('*', Stride { base, align, map }, Uniform { .. }) if literal.is_some() => {
                        let k = literal.unwrap_or(1);
                        Some(Stride {
                            base: format!("({base} * {k})"),
                            align: align.saturating_mul(k),
                            map: map.iter().map(|m| m * k).collect(),
                        })
                    }
                    // (base + m) / k = base / k + m / k when k divides base;
                    // = base / k when no lane crosses a multiple of k.
                    ('/', Stride { base, align, map }, Uniform { .. })
                        if literal.is_some_and(|k| k > 0) =>
                    {
                        let k = literal.unwrap_or(1);
                        let quotient = format!("({base} / {k})");
                        if align % k == 0 {
                            let map: Vec<usize> = map.iter().map(|m| m / k).collect();
                            if map.iter().all(|&m| m == 0) {
                                uniform(quotient, align / k)
                            } else {
                                Some(Stride {
                                    base: quotient,
                                    align: align / k,
                                    map,
                                })
                            }
                        } else if map.iter().all(|&m| m < gcd(align, k)) {
                            uniform(quotient, 1)
                        } else {
                            None
                        }
                    }
                    // (base + m) % k = base % k + m when every m is below
                    // gcd(align, k) (no lane wraps around k).
                    ('%', Stride { base, align, map }, Uniform { .. })
                        if literal
                            .is_some_and(|k| k > 0 && map.iter().all(|&m| m < gcd(align, k))) =>
                    {
                        let k = literal.unwrap_or(1);
                        Some(Stride {
                            base: format!("({base} % {k})"),
                            align: gcd(align, k),
                            map,
                        })
                    }
                    // (base + m) ^ k = base + (m ^ k) when base is a multiple
                    // of a power of two above both m and k.
                    ('^', Stride { base, align, map }, Uniform { .. })
                        if literal.is_some_and(|k| {
                            let p = pow2_divisor(align);
                            k < p && map.iter().all(|&m| m < p)
                        }) =>
                    {
                        let k = literal.unwrap_or(0);
                        Some(Stride {
                            base,
                            align,
                            map: map.iter().map(|m| m ^ k).collect(),
                        })
                    }
                    _ => None,
                }
            }
        }
    }
}

/// The greatest common divisor (gcd(0, x) = x: 0 is a multiple of anything).
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The largest power of two dividing `align` (unbounded for 0).
fn pow2_divisor(align: usize) -> usize {
    if align == 0 {
        usize::MAX
    } else {
        1 << align.trailing_zeros()
    }
}

/// `t12`: a variable the emitter bound to an index expression.
fn is_bound_index(name: &str) -> bool {
    name.strip_prefix('t')
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
}

/// An integer index expression.
#[derive(Debug, PartialEq)]
enum Expr {
    Int(usize),
    Var(String),
    Bin(char, Box<Expr>, Box<Expr>),
}

/// Parses `^ + - * / %` over identifiers, integers and parentheses with C's
/// precedence; anything else (`?:`, comparisons) gives `None`.
fn parse(text: &str) -> Option<Expr> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let e = xor(&tokens, &mut pos)?;
    (pos == tokens.len()).then_some(e)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(usize),
    Ident(String),
    Op(char),
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Token::Int(s.parse().ok()?));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if "^+-*/%()".contains(c) {
            out.push(Token::Op(c));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

fn xor(t: &[Token], pos: &mut usize) -> Option<Expr> {
    let mut e = additive(t, pos)?;
    while let Some(Token::Op('^')) = t.get(*pos) {
        *pos += 1;
        let rhs = additive(t, pos)?;
        e = Expr::Bin('^', Box::new(e), Box::new(rhs));
    }
    Some(e)
}

fn additive(t: &[Token], pos: &mut usize) -> Option<Expr> {
    let mut e = multiplicative(t, pos)?;
    while let Some(Token::Op(op @ ('+' | '-'))) = t.get(*pos) {
        *pos += 1;
        let rhs = multiplicative(t, pos)?;
        e = Expr::Bin(*op, Box::new(e), Box::new(rhs));
    }
    Some(e)
}

fn multiplicative(t: &[Token], pos: &mut usize) -> Option<Expr> {
    let mut e = primary(t, pos)?;
    while let Some(Token::Op(op @ ('*' | '/' | '%'))) = t.get(*pos) {
        *pos += 1;
        let rhs = primary(t, pos)?;
        e = Expr::Bin(*op, Box::new(e), Box::new(rhs));
    }
    Some(e)
}

fn primary(t: &[Token], pos: &mut usize) -> Option<Expr> {
    let token = t.get(*pos)?.clone();
    *pos += 1;
    match token {
        Token::Int(n) => Some(Expr::Int(n)),
        Token::Ident(name) => Some(Expr::Var(name)),
        Token::Op('(') => {
            let e = xor(t, pos)?;
            match t.get(*pos) {
                Some(Token::Op(')')) => {
                    *pos += 1;
                    Some(e)
                }
                _ => None,
            }
        }
        Token::Op(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Lanes {
        let mut l = Lanes::new(8);
        l.stride("i", "i0");
        l.stride("c", "c0");
        l
    }

    /// The base and lane offsets of a wide load serving `expr`.
    fn wide(l: &Lanes, expr: &str) -> Option<(String, Vec<usize>)> {
        let lane = l.classify(expr)?;
        lane.wide_load(8).map(|(b, m)| (b.to_string(), m.to_vec()))
    }

    fn consecutive(base: &str) -> Option<(String, Vec<usize>)> {
        Some((base.into(), (0..8).collect()))
    }

    #[test]
    fn row_and_column_of_a_flat_index() {
        let mut l = lanes();
        // [1, 4608, 3072]: the row is uniform, the column strided.
        let row = l.classify("i / 3072 % 4608").unwrap();
        assert_eq!(
            row,
            Lane::Uniform {
                base: "((i0 / 3072) % 4608)".into(),
                align: 1
            }
        );
        assert_eq!(wide(&l, "i % 3072"), consecutive("(i0 % 3072)"));
        // A width that splits vectors is not uniform.
        assert_eq!(l.classify("i / 3071"), None);
        assert_eq!(l.classify("i % 12"), None);
        l.bind("t3", "i / 3072 % 4608");
        l.bind("t4", "c - 32");
        l.bind("t5", "t4 + 96");
        // The mlp half of a fused q/k/v/mlp output, read from a concat.
        assert_eq!(
            wide(&l, "(t3) * 224 + t5"),
            consecutive("(((c0 - 32) + 96) + (((i0 / 3072) % 4608) * 224))")
        );
        // Offsets that are not multiples of the width break alignment.
        assert_eq!(wide(&l, "c - 3"), None);
        assert_eq!(wide(&l, "(t3) * 225 + c"), None);
    }

    #[test]
    fn rope_partner_and_table() {
        let mut l = lanes();
        // The pair partner of element c is lane v ^ 1 of the same load.
        l.bind("t2", "i % 128");
        l.bind("t12", "t2 ^ 1");
        assert_eq!(
            wide(&l, "t12"),
            Some(("(i0 % 128)".into(), vec![1, 0, 3, 2, 5, 4, 7, 6]))
        );
        // A table of (cos, sin) per pair: [S, 64, 2] at (s, c / 2, 0 | 1).
        l.bind("t5", "i / 3072 % 4608");
        l.bind("t8", "c / 2");
        let base = "(((c0 / 2) + (((i0 / 3072) % 4608) * 64)) * 2)".to_string();
        assert_eq!(
            wide(&l, "((t5) * 64 + t8) * 2"),
            Some((base.clone(), vec![0, 0, 2, 2, 4, 4, 6, 6]))
        );
        assert_eq!(
            wide(&l, "((t5) * 64 + t8) * 2 + 1"),
            Some((base, vec![1, 1, 3, 3, 5, 5, 7, 7]))
        );
        // An xor that would leave the vector is not a pick.
        assert_eq!(wide(&l, "c ^ 8"), None);
        assert_eq!(lane_offset(&[1, 0, 3, 2, 5, 4, 7, 6]), "(v ^ 1)");
        assert_eq!(lane_offset(&(0..8).collect::<Vec<_>>()), "v");
        assert_eq!(
            lane_offset(&[1, 1, 3, 3, 5, 5, 7, 7]),
            "(int)((0x77553311ull >> (4 * v)) & 15)"
        );
    }

    #[test]
    fn unknown_forms_stay_scalar() {
        let l = lanes();
        assert_eq!(l.classify("(c < 4 ? c : c - 4)"), None);
        assert_eq!(wide(&l, "i * 2"), None);
        assert_eq!(l.classify("c * c"), None);
        assert_eq!(l.classify("v"), None);
        assert_eq!(l.classify("t9"), None);
        assert_eq!(Lanes::new(1).classify("i"), None);
    }

    #[test]
    fn branch_conditions() {
        let l = lanes();
        assert_eq!(l.uniform_range("c", 0, 3072), Some("c0 < 3072".to_string()));
        assert_eq!(
            l.uniform_range("c", 3072, 15360),
            Some("c0 >= 3072 && c0 < 15360".to_string())
        );
        assert_eq!(l.uniform_range("c", 0, 3070), None);
        assert_eq!(l.uniform_range("row", 0, 7), Some("row < 7".to_string()));
    }

    #[test]
    fn parser() {
        assert_eq!(
            parse("(a) * 8 + b % 3"),
            Some(Expr::Bin(
                '+',
                Box::new(Expr::Bin(
                    '*',
                    Box::new(Expr::Var("a".into())),
                    Box::new(Expr::Int(8))
                )),
                Box::new(Expr::Bin(
                    '%',
                    Box::new(Expr::Var("b".into())),
                    Box::new(Expr::Int(3))
                ))
            ))
        );
        assert_eq!(parse("a +"), None);
        assert_eq!(parse("(a"), None);
        assert_eq!(parse("a < b"), None);
        // C precedence: `^` binds looser than `+`.
        assert_eq!(
            parse("a + 1 ^ 1"),
            Some(Expr::Bin(
                '^',
                Box::new(Expr::Bin(
                    '+',
                    Box::new(Expr::Var("a".into())),
                    Box::new(Expr::Int(1))
                )),
                Box::new(Expr::Int(1))
            ))
        );
    }
}
