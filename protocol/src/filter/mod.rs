//! The filter language: lexer, parser to an AST, canonical printing and the reference
//! evaluator. See DESIGN.md "Filter expressions" for the grammar and semantics.

mod ast;
mod error;
mod eval;
mod lexer;
mod parser;

use std::fmt;

pub use ast::{CmpOp, Expr, Predicate, RegexLit, Test};
pub use error::{FilterError, FilterErrorKind};
pub use eval::{cmp, eval, eval_predicate, test_value, AttrSource};

/// A parsed and checked filter: regexes compiled with their size limits, every limit
/// enforced. The matching engine only accepts `Filter`s, never raw text.
///
/// ```
/// use std::collections::BTreeMap;
/// use sift_protocol::{Filter, Value};
///
/// let f = Filter::parse(r#"region in ["eu", "us"] && price >= 10"#).unwrap();
/// let mut attrs = BTreeMap::new();
/// attrs.insert("region".to_string(), Value::Str("eu".into()));
/// attrs.insert("price".to_string(), Value::Float(12.5));
/// assert!(f.matches(&attrs));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    expr: Option<Expr>,
    predicates: usize,
}

impl Filter {
    /// Parses filter text. Empty (or all-whitespace) text is the match-all filter.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let (expr, predicates) = parser::parse(text)?;
        Ok(Filter { expr, predicates })
    }

    /// The filter that matches every event.
    pub fn match_all() -> Filter {
        Filter {
            expr: None,
            predicates: 0,
        }
    }

    /// The expression, or `None` for the match-all filter.
    pub fn expr(&self) -> Option<&Expr> {
        self.expr.as_ref()
    }

    /// How many predicates the filter has.
    pub fn predicate_count(&self) -> usize {
        self.predicates
    }

    /// The reference evaluation of the filter against an event's attributes.
    pub fn matches<A: AttrSource + ?Sized>(&self, attrs: &A) -> bool {
        self.expr.as_ref().is_none_or(|e| eval(e, attrs))
    }
}

impl fmt::Display for Filter {
    /// The canonical text of the filter; it parses back to an equal `Filter`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => Ok(()),
            Some(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests;
