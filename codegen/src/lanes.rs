//! Lane analysis of index expressions in vectorized element loops.
//!
//! A vectorized kernel computes `w` consecutive elements per thread in a loop
//! over `v` (`i = i0 + v`, `c = c0 + v`, with `i0` and `c0` multiples of
//! `w`). A load is one wide load when the element it reads is `base + v`
//! for a `base` that is the same for the whole loop and a multiple of `w`:
//! then elements `base .. base + w` are read at once, aligned. This module
//! decides that from the index expressions the emitter builds (`i / 3072 %
//! 4608`, `(t3) * 224 + t8`, `c - 32`, ...), by parsing them and tracking,
//! for every index variable, its *lane class*:
//!
//! - [`Lane::Uniform`]: the same for every `v` (a row index, `i / 3072` when
//!   3072 is a multiple of `w`), with its value written in terms of
//!   variables defined before the loop, and whether it is a known multiple
//!   of `w`;
//! - [`Lane::Stride`]: `base + v` with `base` (in before-the-loop terms) a
//!   multiple of `w`.
//!
//! Anything else (a product of `v`-dependent terms, `^`, a ternary, a
//! division that may split a vector) is unknown, and its loads stay scalar.
//! A branch condition `x < bound` with `x` strided and `bound` a multiple of
//! `w` is the same for every `v` of the loop; evaluated on `x`'s base it
//! guards the wide loads made inside the branch (so a concat whose parts are
//! multiples of `w` wide loads each part with one wide load).

use std::collections::HashMap;

/// How an index expression varies over the lanes `v` of a vectorized loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The same value for every `v`.
    Uniform {
        /// The value, in terms of variables defined before the loop.
        base: String,
        /// Whether it is known to be a multiple of the vector width.
        aligned: bool,
    },
    /// `base + v`, with `base` a multiple of the vector width.
    Stride {
        /// The value at `v = 0`, in terms of variables defined before the loop.
        base: String,
    },
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
            },
        );
        self.known.insert(
            base.to_string(),
            Lane::Uniform {
                base: base.to_string(),
                aligned: true,
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
        let base = match self.classify(expr)? {
            Lane::Uniform { base, .. } => base,
            Lane::Stride { base } if start % self.width == 0 && end % self.width == 0 => base,
            Lane::Stride { .. } => return None,
        };
        Some(if start == 0 {
            format!("{base} < {end}")
        } else {
            format!("{base} >= {start} && {base} < {end}")
        })
    }

    fn eval(&self, e: &Expr) -> Option<Lane> {
        let w = self.width;
        let uniform = |base: String, aligned: bool| Some(Lane::Uniform { base, aligned });
        match e {
            Expr::Int(n) => uniform(n.to_string(), n % w == 0),
            Expr::Var(name) => match self.known.get(name) {
                Some(lane) => Some(lane.clone()),
                // Loop variables and unclassified bound indices vary.
                None if name == "v" || name == "i" || name == "c" || is_bound_index(name) => None,
                // Everything else (row, lane, k, chunk, i0, c0) is defined
                // before the loop.
                None => uniform(name.clone(), false),
            },
            Expr::Bin(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                use Lane::{Stride, Uniform};
                match (op, a, b) {
                    (
                        op,
                        Uniform {
                            base: x,
                            aligned: ax,
                        },
                        Uniform {
                            base: y,
                            aligned: ay,
                        },
                    ) => {
                        let aligned = match op {
                            '+' | '-' => ax && ay,
                            '*' => ax || ay,
                            _ => false,
                        };
                        uniform(format!("({x} {op} {y})"), aligned)
                    }
                    ('+', Stride { base: x }, Uniform { base: y, aligned })
                    | ('+', Uniform { base: y, aligned }, Stride { base: x })
                        if aligned =>
                    {
                        Some(Stride {
                            base: format!("({x} + {y})"),
                        })
                    }
                    ('-', Stride { base: x }, Uniform { base: y, aligned }) if aligned => {
                        Some(Stride {
                            base: format!("({x} - {y})"),
                        })
                    }
                    // (base + v) / d = base / d and (base + v) % d =
                    // base % d + v when base and d are multiples of w.
                    ('/', Stride { base: x }, Uniform { base: d, .. }) if divides(w, &d) => {
                        uniform(format!("({x} / {d})"), false)
                    }
                    ('%', Stride { base: x }, Uniform { base: d, .. }) if divides(w, &d) => {
                        Some(Stride {
                            base: format!("({x} % {d})"),
                        })
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Whether `d` is an integer literal that is a positive multiple of `w`.
fn divides(w: usize, d: &str) -> bool {
    d.parse::<usize>().is_ok_and(|d| d > 0 && d % w == 0)
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

/// Parses `+ - * / %` over identifiers, integers and parentheses with C's
/// precedence; anything else (`^`, `?:`, comparisons) gives `None`.
fn parse(text: &str) -> Option<Expr> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let e = additive(&tokens, &mut pos)?;
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
        } else if "+-*/%()".contains(c) {
            out.push(Token::Op(c));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
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
            let e = additive(t, pos)?;
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

    fn stride(base: &str) -> Option<Lane> {
        Some(Lane::Stride { base: base.into() })
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
                aligned: false
            }
        );
        assert_eq!(l.classify("i % 3072"), stride("(i0 % 3072)"));
        // A width that splits vectors is not uniform.
        assert_eq!(l.classify("i / 3071"), None);
        assert_eq!(l.classify("i % 12"), None);
        l.bind("t3", "i / 3072 % 4608");
        l.bind("t4", "c - 32");
        l.bind("t5", "t4 + 96");
        // The mlp half of a fused q/k/v/mlp output, read from a concat.
        assert_eq!(
            l.classify("(t3) * 224 + t5"),
            stride("(((c0 - 32) + 96) + (((i0 / 3072) % 4608) * 224))")
        );
        // Offsets that are not multiples of the width break alignment.
        assert_eq!(l.classify("c - 3"), None);
        assert_eq!(l.classify("(t3) * 225 + c"), None);
    }

    #[test]
    fn unknown_forms_stay_scalar() {
        let l = lanes();
        assert_eq!(l.classify("c ^ 1"), None);
        assert_eq!(l.classify("(c < 4 ? c : c - 4)"), None);
        assert_eq!(l.classify("i * 2"), None);
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
    }
}
