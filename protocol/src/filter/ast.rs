//! The filter AST and its canonical printing (which parses back to the same tree).

use std::fmt;

use crate::value::{write_string_literal, Value};

/// A filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// True when every child is true (two or more children).
    And(Vec<Expr>),
    /// True when any child is true (two or more children).
    Or(Vec<Expr>),
    /// Negation of the whole sub-expression (true when the inner predicate's attribute is
    /// missing).
    Not(Box<Expr>),
    /// One predicate over one attribute.
    Pred(Predicate),
}

/// A predicate over one attribute. It is false when the event lacks the attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicate {
    /// The attribute name.
    pub attr: String,
    /// The test applied to the attribute's value.
    pub test: Test,
}

/// The test of a predicate.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `attr <op> literal`. Ordering operators never have a boolean literal.
    Cmp(CmpOp, Value),
    /// `attr in [..]` or, when `negated`, `attr not in [..]`.
    In {
        /// True for `not in`.
        negated: bool,
        /// The literals, one or more.
        items: Vec<Value>,
    },
    /// `attr ~ "regex"` (unanchored; string values only).
    Regex(RegexLit),
    /// `exists(attr)`.
    Exists,
    /// `prefix(attr, "s")` (string values only).
    Prefix(String),
    /// `suffix(attr, "s")` (string values only).
    Suffix(String),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// True for `<`, `<=`, `>`, `>=`.
    pub fn is_ordering(self) -> bool {
        matches!(self, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge)
    }
}

/// A compiled regex literal (compiled once, with the size limits, at parse time).
#[derive(Clone, Debug)]
pub struct RegexLit {
    regex: regex::Regex,
}

impl RegexLit {
    pub(crate) fn new(regex: regex::Regex) -> RegexLit {
        RegexLit { regex }
    }

    /// The pattern as written in the filter (after string unescaping).
    pub fn pattern(&self) -> &str {
        self.regex.as_str()
    }

    /// The compiled regex.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }
}

impl PartialEq for RegexLit {
    fn eq(&self, other: &RegexLit) -> bool {
        self.pattern() == other.pattern()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Pred(p) => p.fmt(f),
            Expr::Not(inner) => {
                f.write_str("!(")?;
                inner.fmt(f)?;
                f.write_str(")")
            }
            Expr::And(children) => join(f, children, " && ", |c| {
                !matches!(c, Expr::Pred(_) | Expr::Not(_))
            }),
            Expr::Or(children) => join(f, children, " || ", |c| matches!(c, Expr::Or(_))),
        }
    }
}

fn join(
    f: &mut fmt::Formatter<'_>,
    children: &[Expr],
    sep: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, c) in children.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if needs_parens(c) {
            write!(f, "({c})")?;
        } else {
            fmt::Display::fmt(c, f)?;
        }
    }
    Ok(())
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.attr;
        match &self.test {
            Test::Cmp(op, v) => write!(f, "{a} {} {v}", op.as_str()),
            Test::In { negated, items } => {
                write!(f, "{a} {}in [", if *negated { "not " } else { "" })?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    v.fmt(f)?;
                }
                f.write_str("]")
            }
            Test::Regex(r) => {
                write!(f, "{a} ~ ")?;
                write_string_literal(f, r.pattern())
            }
            Test::Exists => write!(f, "exists({a})"),
            Test::Prefix(s) => {
                write!(f, "prefix({a}, ")?;
                write_string_literal(f, s)?;
                f.write_str(")")
            }
            Test::Suffix(s) => {
                write!(f, "suffix({a}, ")?;
                write_string_literal(f, s)?;
                f.write_str(")")
            }
        }
    }
}
