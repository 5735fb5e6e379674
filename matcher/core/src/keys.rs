//! Index keys: numbers in one exact total order, and value hashing consistent with the filter
//! language's equality (`3 == 3.0`, strings by bytes, booleans only with booleans).

use std::cmp::Ordering;
use std::hash::BuildHasher;

use sift_protocol::value::cmp_int_float;
use sift_protocol::Value;

/// A number normalised so that equal numbers have one representation: integral floats in the
/// i64 range become `Int`, and NaN is not representable. `Ord` is the exact numeric order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NumKey {
    Int(i64),
    /// Never NaN, never integral within the i64 range.
    Float(f64),
}

impl NumKey {
    pub(crate) fn from_int(i: i64) -> NumKey {
        NumKey::Int(i)
    }

    /// `None` for NaN.
    pub(crate) fn from_float(f: f64) -> Option<NumKey> {
        if f.is_nan() {
            return None;
        }
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
            // In range and integral, so the cast is exact (and -0.0 becomes 0).
            return Some(NumKey::Int(f as i64));
        }
        Some(NumKey::Float(f))
    }

    pub(crate) fn from_value(v: &Value) -> Option<NumKey> {
        match v {
            Value::Int(i) => Some(NumKey::Int(*i)),
            Value::Float(f) => NumKey::from_float(*f),
            _ => None,
        }
    }
}

impl Ord for NumKey {
    fn cmp(&self, other: &NumKey) -> Ordering {
        let ord = match (self, other) {
            (NumKey::Int(a), NumKey::Int(b)) => Some(a.cmp(b)),
            (NumKey::Float(a), NumKey::Float(b)) => a.partial_cmp(b),
            (NumKey::Int(a), NumKey::Float(b)) => cmp_int_float(*a, *b),
            (NumKey::Float(a), NumKey::Int(b)) => cmp_int_float(*b, *a).map(Ordering::reverse),
        };
        // Never NaN by construction.
        ord.unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for NumKey {
    fn partial_cmp(&self, other: &NumKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for NumKey {
    fn eq(&self, other: &NumKey) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for NumKey {}

/// A value as the index sees it: borrowed string bytes, a normalised number, or a boolean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum KeyRef<'a> {
    Str(&'a [u8]),
    Num(NumKey),
    Bool(bool),
}

impl<'a> KeyRef<'a> {
    /// `None` for a NaN float, which equals nothing.
    pub(crate) fn from_value(v: &'a Value) -> Option<KeyRef<'a>> {
        match v {
            Value::Str(s) => Some(KeyRef::Str(s.as_bytes())),
            Value::Int(i) => Some(KeyRef::Num(NumKey::Int(*i))),
            Value::Float(f) => NumKey::from_float(*f).map(KeyRef::Num),
            Value::Bool(b) => Some(KeyRef::Bool(*b)),
        }
    }

    /// A 64-bit hash under `state`; equal values (by the filter language) hash equal.
    pub(crate) fn hash_with<S: BuildHasher>(self, state: &S) -> u64 {
        match self {
            KeyRef::Str(b) => state.hash_one((0u8, b)),
            KeyRef::Num(NumKey::Int(i)) => state.hash_one((1u8, i)),
            KeyRef::Num(NumKey::Float(f)) => state.hash_one((2u8, f.to_bits())),
            KeyRef::Bool(b) => state.hash_one((3u8, b)),
        }
    }
}

/// A seedless 64-bit mixer (splitmix64's finaliser) for choices that must agree across
/// processes, like key affinity in groups.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A process-independent hash of a value (FNV-1a over a tagged encoding, then mixed).
pub(crate) fn stable_hash(k: KeyRef<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match k {
        KeyRef::Str(b) => {
            feed(&[0]);
            feed(b);
        }
        KeyRef::Num(NumKey::Int(i)) => {
            feed(&[1]);
            feed(&i.to_le_bytes());
        }
        KeyRef::Num(NumKey::Float(f)) => {
            feed(&[2]);
            feed(&f.to_bits().to_le_bytes());
        }
        KeyRef::Bool(b) => feed(&[3, u8::from(b)]),
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_numbers_share_a_key() {
        assert_eq!(NumKey::from_float(3.0), Some(NumKey::Int(3)));
        assert_eq!(NumKey::from_float(-0.0), Some(NumKey::Int(0)));
        assert!(matches!(NumKey::from_float(0.5), Some(NumKey::Float(_))));
        assert!(matches!(NumKey::from_float(1e19), Some(NumKey::Float(_))));
        assert_eq!(NumKey::from_float(f64::NAN), None);
        let s = foldhash::fast::FixedState::with_seed(1);
        let a = KeyRef::from_value(&Value::Int(3)).unwrap().hash_with(&s);
        let b = KeyRef::from_value(&Value::Float(3.0))
            .unwrap()
            .hash_with(&s);
        assert_eq!(a, b);
        let c = KeyRef::from_value(&Value::Str("3".into()))
            .unwrap()
            .hash_with(&s);
        assert_ne!(a, c);
    }

    #[test]
    fn order_is_exact() {
        let big = NumKey::Int((1 << 53) + 1);
        let f = NumKey::from_float((1u64 << 53) as f64).unwrap();
        assert!(big > f);
        assert!(NumKey::Float(0.5) < NumKey::Int(1));
        assert!(NumKey::Float(-0.5) > NumKey::Int(-1));
        assert!(NumKey::Float(1e19) > NumKey::Int(i64::MAX));
        assert!(NumKey::Float(f64::NEG_INFINITY) < NumKey::Int(i64::MIN));
    }
}
