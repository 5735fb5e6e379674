//! The reference evaluator: a plain walk over the AST, the definition of the filter
//! semantics that the matcher's index is tested against.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::ast::{CmpOp, Expr, Predicate, Test};
use crate::value::{compare, Value};

/// Anything that can look up an attribute value by name.
pub trait AttrSource {
    /// The value of attribute `name`, if the event has it.
    fn attr(&self, name: &str) -> Option<&Value>;
}

impl AttrSource for BTreeMap<String, Value> {
    fn attr(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

impl AttrSource for [(String, Value)] {
    fn attr(&self, name: &str) -> Option<&Value> {
        self.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Evaluates `expr` against `attrs`.
pub fn eval<A: AttrSource + ?Sized>(expr: &Expr, attrs: &A) -> bool {
    match expr {
        Expr::And(children) => children.iter().all(|c| eval(c, attrs)),
        Expr::Or(children) => children.iter().any(|c| eval(c, attrs)),
        Expr::Not(inner) => !eval(inner, attrs),
        Expr::Pred(p) => eval_predicate(p, attrs),
    }
}

/// Evaluates one predicate: false when the attribute is missing, whatever the test.
pub fn eval_predicate<A: AttrSource + ?Sized>(p: &Predicate, attrs: &A) -> bool {
    let Some(value) = attrs.attr(&p.attr) else {
        return false;
    };
    test_value(&p.test, value)
}

/// Applies a test to a present value.
pub fn test_value(test: &Test, value: &Value) -> bool {
    match test {
        Test::Cmp(op, lit) => cmp(*op, value, lit),
        Test::In { negated, items } => items.iter().any(|i| value.filter_eq(i)) != *negated,
        Test::Regex(r) => matches!(value, Value::Str(s) if r.regex().is_match(s)),
        Test::Exists => true,
        Test::Prefix(p) => matches!(value, Value::Str(s) if s.starts_with(p.as_str())),
        Test::Suffix(p) => matches!(value, Value::Str(s) if s.ends_with(p.as_str())),
    }
}

/// `value <op> lit` under the filter language's rules.
pub fn cmp(op: CmpOp, value: &Value, lit: &Value) -> bool {
    let ord = compare(value, lit);
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        _ if matches!(value, Value::Bool(_)) || matches!(lit, Value::Bool(_)) => false,
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}
