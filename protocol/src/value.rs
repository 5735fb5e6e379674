//! Attribute values and the comparison rules of the filter language.
//!
//! Integers and floats compare numerically and exactly with each other (`3 == 3.0`, and
//! `2^53 + 1 != 2^53 as f64`); strings compare by bytes; booleans only equal booleans; values of
//! different kinds are never equal and never ordered.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An attribute value: a string, a 64-bit signed integer, a 64-bit float or a boolean.
///
/// On the wire it is the matching MessagePack type (str, int, float, bool).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A UTF-8 string.
    Str(String),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Value {
    /// The name of the value's kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
        }
    }

    /// Equality as the filter language defines it (`==`).
    pub fn filter_eq(&self, other: &Value) -> bool {
        compare(self, other) == Some(Ordering::Equal)
    }
}

/// Compares two values under the filter language's rules.
///
/// Returns `None` when the two are not comparable: different kinds (a number against a string
/// or a boolean), or a NaN float. Booleans compare only for equality: `Some(Equal)` or
/// `Some(Less)`/`Some(Greater)` by `false < true`, which callers must not use for ordering
/// predicates (the parser refuses ordering comparisons with boolean literals, and evaluation
/// treats an ordering against a boolean value as false).
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Float(y)) => cmp_int_float(*x, *y),
        (Value::Float(x), Value::Int(y)) => cmp_int_float(*y, *x).map(Ordering::reverse),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Exact comparison of an integer with a float (no rounding of the integer to f64).
pub fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // In range, so the cast is exact.
    let ti = t as i64;
    match i.cmp(&ti) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)),
        other => Some(other),
    }
}

impl fmt::Display for Value {
    /// Writes the value as a filter-language literal (strings quoted and escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write_string_literal(f, s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
                    write!(f, "{x:.1}")
                } else {
                    // `{:?}` prints the shortest representation that round-trips.
                    write!(f, "{x:?}")
                }
            }
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Writes `s` as a filter-language string literal with the grammar's escapes.
pub fn write_string_literal(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Str(v) => s.serialize_str(v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl Visitor<'_> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a 64-bit integer, a float or a boolean")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 signed bits")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
        Ok(Value::Float(f64::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_float_compare_is_exact() {
        assert_eq!(cmp_int_float(3, 3.0), Some(Ordering::Equal));
        assert_eq!(cmp_int_float(3, 3.5), Some(Ordering::Less));
        assert_eq!(cmp_int_float(-3, -3.5), Some(Ordering::Greater));
        assert_eq!(cmp_int_float(-4, -3.5), Some(Ordering::Less));
        // 2^53 + 1 is not representable as f64; the f64 2^53 is not equal to it.
        let big = (1i64 << 53) + 1;
        assert_eq!(
            cmp_int_float(big, (1u64 << 53) as f64),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp_int_float(i64::MAX, 9.3e18), Some(Ordering::Less));
        assert_eq!(cmp_int_float(i64::MIN, -9.3e18), Some(Ordering::Greater));
        assert_eq!(
            cmp_int_float(i64::MIN, -9_223_372_036_854_775_808.0),
            Some(Ordering::Equal)
        );
        assert_eq!(cmp_int_float(0, f64::NAN), None);
        assert_eq!(cmp_int_float(0, f64::INFINITY), Some(Ordering::Less));
        assert_eq!(cmp_int_float(0, -0.0), Some(Ordering::Equal));
    }

    #[test]
    fn kinds_do_not_mix() {
        let s = Value::Str("3".into());
        assert_eq!(compare(&s, &Value::Int(3)), None);
        assert_eq!(compare(&Value::Bool(true), &Value::Int(1)), None);
        assert!(!s.filter_eq(&Value::Int(3)));
        assert!(Value::Int(3).filter_eq(&Value::Float(3.0)));
        assert_eq!(
            compare(&Value::Str("a".into()), &Value::Str("b".into())),
            Some(Ordering::Less)
        );
        // Bytes order: 'Z' (0x5a) < 'a' (0x61), and "é" (0xc3 0xa9) > "z".
        assert_eq!(
            compare(&Value::Str("é".into()), &Value::Str("z".into())),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn display_round_trips_as_literals() {
        assert_eq!(
            Value::Str("a\"b\\c\n\t\u{1}".into()).to_string(),
            r#""a\"b\\c\n\t\u{1}""#
        );
        assert_eq!(Value::Float(3.0).to_string(), "3.0");
        assert_eq!(Value::Float(0.1).to_string(), "0.1");
        assert_eq!(Value::Float(1e300).to_string(), "1e300");
        assert_eq!(Value::Int(-7).to_string(), "-7");
    }
}
