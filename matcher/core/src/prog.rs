//! A filter compiled to a compact byte program: inline in the subscription record when small
//! (one allocation otherwise), evaluated in place, and analysed for the index's access keys.
//!
//! Layout: every node is `[op: u8][size: u16 LE][body]`, `size` counting the whole node, so a
//! parent can skip a child without decoding it. Composite bodies are their children (an `and`
//! first has two bytes recording which children the planner chose as access keys); a predicate
//! body is `[attribute id: u16 LE][payload]`, payloads per op below. Literals are
//! `[tag: u8][data]`. Regexes are ids into the engine's [`RegexPool`]. A program is at most
//! about 9 bytes per byte of filter text (an `in` list of one-digit integers), so sizes fit
//! in u16 for the 4 KiB filter limit.

use std::cmp::Ordering;

use sift_protocol::filter::{CmpOp, Expr, Predicate, Test};
use sift_protocol::value::cmp_int_float;
use sift_protocol::Value;

use crate::attrs::{AttrId, AttrNames, EventView};
use crate::regex_pool::{RegexId, RegexPool};

const OP_AND: u8 = 1;
const OP_OR: u8 = 2;
const OP_NOT: u8 = 3;
const OP_CMP: u8 = 4; // [cmp: u8][lit]
const OP_IN: u8 = 5; // [count: u16][lit]*
const OP_NOT_IN: u8 = 6; // [count: u16][lit]*
const OP_REGEX: u8 = 7; // [id: u32]
const OP_EXISTS: u8 = 8; // nothing
const OP_PREFIX: u8 = 9; // [len: u16][bytes]
const OP_SUFFIX: u8 = 10; // [len: u16][bytes]

const LIT_STR: u8 = 1; // [len: u16][bytes]
const LIT_INT: u8 = 2; // [i64 LE]
const LIT_FLOAT: u8 = 3; // [f64 LE]
const LIT_BOOL: u8 = 4; // [u8]

const HEADER: usize = 3;

/// Programs up to this many bytes live inline in the subscription record (no allocation and
/// no extra cache miss when a candidate is evaluated).
const INLINE_BYTES: usize = 37;

/// "No child chosen" in an `and` node's choice bytes.
pub(crate) const NO_CHOICE: u8 = u8::MAX;

/// A compiled filter. The empty program matches everything.
#[derive(Debug)]
pub(crate) struct Prog {
    code: Code,
}

#[derive(Debug)]
enum Code {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl Default for Prog {
    fn default() -> Prog {
        Prog {
            code: Code::Inline {
                len: 0,
                bytes: [0; INLINE_BYTES],
            },
        }
    }
}

/// A literal decoded from a program.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lit<'a> {
    Str(&'a [u8]),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A decoded node, borrowing from the program.
pub(crate) enum Node<'a> {
    /// `choice`: the child chosen for access, and a second one when the two are merged into
    /// one interval; [`NO_CHOICE`] for none.
    And {
        children: Children<'a>,
        choice: (u8, u8),
    },
    Or(Children<'a>),
    Not(usize),
    Pred {
        attr: AttrId,
        test: PredTest<'a>,
    },
}

/// A predicate's test, decoded.
pub(crate) enum PredTest<'a> {
    Cmp(CmpOp, Lit<'a>),
    In { negated: bool, items: Lits<'a> },
    Regex(RegexId),
    Exists,
    Prefix(&'a [u8]),
    Suffix(&'a [u8]),
}

/// Iterator over the child positions of a composite node.
pub(crate) struct Children<'a> {
    code: &'a [u8],
    pos: usize,
    end: usize,
}

impl Iterator for Children<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.pos >= self.end {
            return None;
        }
        let at = self.pos;
        self.pos += node_size(self.code, at);
        Some(at)
    }
}

/// Iterator over an `in` list's literals.
#[derive(Clone)]
pub(crate) struct Lits<'a> {
    code: &'a [u8],
    pos: usize,
    left: u16,
}

impl<'a> Iterator for Lits<'a> {
    type Item = Lit<'a>;
    fn next(&mut self) -> Option<Lit<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (lit, next) = read_lit(self.code, self.pos);
        self.pos = next;
        Some(lit)
    }
}

fn u16_at(code: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes([code[pos], code[pos + 1]])
}

fn u32_at(code: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes([code[pos], code[pos + 1], code[pos + 2], code[pos + 3]])
}

fn u64_at(code: &[u8], pos: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&code[pos..pos + 8]);
    u64::from_le_bytes(b)
}

fn node_size(code: &[u8], pos: usize) -> usize {
    u16_at(code, pos + 1) as usize
}

fn read_lit(code: &[u8], pos: usize) -> (Lit<'_>, usize) {
    match code[pos] {
        LIT_STR => {
            let len = u16_at(code, pos + 1) as usize;
            (Lit::Str(&code[pos + 3..pos + 3 + len]), pos + 3 + len)
        }
        LIT_INT => (Lit::Int(u64_at(code, pos + 1) as i64), pos + 9),
        LIT_FLOAT => (Lit::Float(f64::from_bits(u64_at(code, pos + 1))), pos + 9),
        _ => (Lit::Bool(code[pos + 1] != 0), pos + 2),
    }
}

fn read_bytes(code: &[u8], pos: usize) -> &[u8] {
    let len = u16_at(code, pos) as usize;
    &code[pos + 2..pos + 2 + len]
}

/// The attribute names `expr` refers to (to check room before compiling).
pub(crate) fn attr_names(expr: Option<&Expr>) -> Vec<&str> {
    fn walk<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
        match e {
            Expr::And(c) | Expr::Or(c) => c.iter().for_each(|c| walk(c, out)),
            Expr::Not(inner) => walk(inner, out),
            Expr::Pred(p) => out.push(&p.attr),
        }
    }
    let mut out = Vec::new();
    if let Some(e) = expr {
        walk(e, &mut out);
    }
    out
}

impl Prog {
    /// Compiles a filter expression. Regexes are interned in `pool` and attribute names in
    /// `names` (one reference each); the caller has checked that `names` has room.
    pub(crate) fn compile(
        expr: Option<&Expr>,
        pool: &mut RegexPool,
        names: &mut AttrNames,
    ) -> Prog {
        let mut code = Vec::new();
        if let Some(e) = expr {
            emit(e, pool, names, &mut code);
        }
        debug_assert!(code.len() <= u16::MAX as usize);
        if code.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..code.len()].copy_from_slice(&code);
            return Prog {
                code: Code::Inline {
                    len: code.len() as u8,
                    bytes,
                },
            };
        }
        Prog {
            code: Code::Heap(code.into_boxed_slice()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.code {
            Code::Inline { len, bytes } => &bytes[..*len as usize],
            Code::Heap(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.code {
            Code::Inline { len, bytes } => &mut bytes[..*len as usize],
            Code::Heap(b) => b,
        }
    }

    /// The first byte of code (0 for the empty program); reading it brings the code into the
    /// cache ahead of evaluation.
    pub(crate) fn first_byte(&self) -> u8 {
        self.bytes().first().copied().unwrap_or(0)
    }

    /// True for the match-all program.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Bytes of code held on the heap (0 when inline), for memory accounting.
    pub(crate) fn heap_len(&self) -> usize {
        match &self.code {
            Code::Inline { .. } => 0,
            Code::Heap(b) => b.len(),
        }
    }

    /// Drops this program's regex and attribute-name references.
    pub(crate) fn release(&self, pool: &mut RegexPool, names: &mut AttrNames) {
        self.for_each_predicate(|attr, test| {
            names.release(attr);
            if let PredTest::Regex(id) = test {
                pool.release(*id);
            }
        });
    }

    /// Calls `f` for every predicate, in program order.
    pub(crate) fn for_each_predicate<'s>(&'s self, mut f: impl FnMut(AttrId, &PredTest<'s>)) {
        if !self.is_empty() {
            self.walk(0, &mut f);
        }
    }

    fn walk<'s>(&'s self, pos: usize, f: &mut impl FnMut(AttrId, &PredTest<'s>)) {
        match self.node(pos) {
            Node::And { children: c, .. } | Node::Or(c) => c.for_each(|child| self.walk(child, f)),
            Node::Not(inner) => self.walk(inner, f),
            Node::Pred { attr, test } => f(attr, &test),
        }
    }

    /// Records the planner's choice in the `and` node at `pos`.
    pub(crate) fn set_choice(&mut self, pos: usize, choice: (u8, u8)) {
        let code = self.bytes_mut();
        debug_assert_eq!(code[pos], OP_AND);
        code[pos + HEADER] = choice.0;
        code[pos + HEADER + 1] = choice.1;
    }

    /// Decodes the node at `pos` (the root is at 0; only for non-empty programs).
    pub(crate) fn node(&self, pos: usize) -> Node<'_> {
        let code = self.bytes();
        let end = pos + node_size(code, pos);
        let body = pos + HEADER;
        match code[pos] {
            OP_AND => Node::And {
                children: Children {
                    code,
                    pos: body + 2,
                    end,
                },
                choice: (code[body], code[body + 1]),
            },
            OP_OR => Node::Or(Children {
                code,
                pos: body,
                end,
            }),
            OP_NOT => Node::Not(body),
            op => Node::Pred {
                attr: u16_at(code, body),
                test: decode_test(code, op, body + 2),
            },
        }
    }

    /// Evaluates the program against an event's attributes.
    pub(crate) fn eval(&self, attrs: &EventView<'_>, pool: &RegexPool) -> bool {
        self.is_empty() || self.eval_at(0, attrs, pool)
    }

    /// Walks the code directly: children are skipped by size, and a predicate's test is only
    /// decoded when the event has its attribute.
    fn eval_at(&self, pos: usize, attrs: &EventView<'_>, pool: &RegexPool) -> bool {
        let code = self.bytes();
        let end = pos + node_size(code, pos);
        let body = pos + HEADER;
        match code[pos] {
            OP_AND => {
                let mut c = body + 2;
                while c < end {
                    if !self.eval_at(c, attrs, pool) {
                        return false;
                    }
                    c += node_size(code, c);
                }
                true
            }
            OP_OR => {
                let mut c = body;
                while c < end {
                    if self.eval_at(c, attrs, pool) {
                        return true;
                    }
                    c += node_size(code, c);
                }
                false
            }
            OP_NOT => !self.eval_at(body, attrs, pool),
            op => match attrs.get(u16_at(code, body)) {
                None => false,
                Some(v) => eval_test(&decode_test(code, op, body + 2), v, pool),
            },
        }
    }
}

fn decode_test(code: &[u8], op: u8, at: usize) -> PredTest<'_> {
    match op {
        OP_CMP => PredTest::Cmp(cmp_from_u8(code[at]), read_lit(code, at + 1).0),
        OP_IN | OP_NOT_IN => PredTest::In {
            negated: op == OP_NOT_IN,
            items: Lits {
                code,
                pos: at + 2,
                left: u16_at(code, at),
            },
        },
        OP_REGEX => PredTest::Regex(u32_at(code, at)),
        OP_EXISTS => PredTest::Exists,
        OP_PREFIX => PredTest::Prefix(read_bytes(code, at)),
        _ => PredTest::Suffix(read_bytes(code, at)),
    }
}

/// Applies a decoded test to a present value, with the reference evaluator's semantics.
pub(crate) fn eval_test(test: &PredTest<'_>, v: &Value, pool: &RegexPool) -> bool {
    match test {
        PredTest::Cmp(op, lit) => cmp_lit(*op, v, *lit),
        PredTest::In { negated, items } => {
            items
                .clone()
                .any(|l| compare_lit(v, l) == Some(Ordering::Equal))
                != *negated
        }
        PredTest::Regex(id) => matches!(v, Value::Str(s) if pool.is_match(*id, s)),
        PredTest::Exists => true,
        PredTest::Prefix(p) => matches!(v, Value::Str(s) if s.as_bytes().starts_with(p)),
        PredTest::Suffix(p) => matches!(v, Value::Str(s) if s.as_bytes().ends_with(p)),
    }
}

/// `value <op> lit`, exactly as `sift_protocol::filter::cmp`.
pub(crate) fn cmp_lit(op: CmpOp, v: &Value, lit: Lit<'_>) -> bool {
    let ord = compare_lit(v, lit);
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        _ if matches!(v, Value::Bool(_)) || matches!(lit, Lit::Bool(_)) => false,
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// `sift_protocol::value::compare` against a program literal.
pub(crate) fn compare_lit(v: &Value, lit: Lit<'_>) -> Option<Ordering> {
    match (v, lit) {
        (Value::Str(a), Lit::Str(b)) => Some(a.as_bytes().cmp(b)),
        (Value::Int(a), Lit::Int(b)) => Some(a.cmp(&b)),
        (Value::Float(a), Lit::Float(b)) => a.partial_cmp(&b),
        (Value::Int(a), Lit::Float(b)) => cmp_int_float(*a, b),
        (Value::Float(a), Lit::Int(b)) => cmp_int_float(b, *a).map(Ordering::reverse),
        (Value::Bool(a), Lit::Bool(b)) => Some(a.cmp(&b)),
        _ => None,
    }
}

fn cmp_to_u8(op: CmpOp) -> u8 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

fn cmp_from_u8(b: u8) -> CmpOp {
    match b {
        0 => CmpOp::Eq,
        1 => CmpOp::Ne,
        2 => CmpOp::Lt,
        3 => CmpOp::Le,
        4 => CmpOp::Gt,
        _ => CmpOp::Ge,
    }
}

/// Starts a node; returns its position so [`finish`] can patch the size.
fn begin(op: u8, out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.push(op);
    out.extend_from_slice(&[0; 2]);
    at
}

fn finish(at: usize, out: &mut [u8]) {
    let size = (out.len() - at) as u16;
    out[at + 1..at + HEADER].copy_from_slice(&size.to_le_bytes());
}

fn emit(e: &Expr, pool: &mut RegexPool, names: &mut AttrNames, out: &mut Vec<u8>) {
    match e {
        Expr::And(children) | Expr::Or(children) => {
            let is_and = matches!(e, Expr::And(_));
            let at = begin(if is_and { OP_AND } else { OP_OR }, out);
            if is_and {
                out.extend_from_slice(&[NO_CHOICE, NO_CHOICE]);
            }
            for c in children {
                emit(c, pool, names, out);
            }
            finish(at, out);
        }
        Expr::Not(inner) => {
            let at = begin(OP_NOT, out);
            emit(inner, pool, names, out);
            finish(at, out);
        }
        Expr::Pred(p) => emit_pred(p, pool, names, out),
    }
}

fn emit_pred(p: &Predicate, pool: &mut RegexPool, names: &mut AttrNames, out: &mut Vec<u8>) {
    let op = match &p.test {
        Test::Cmp(..) => OP_CMP,
        Test::In { negated: false, .. } => OP_IN,
        Test::In { negated: true, .. } => OP_NOT_IN,
        Test::Regex(_) => OP_REGEX,
        Test::Exists => OP_EXISTS,
        Test::Prefix(_) => OP_PREFIX,
        Test::Suffix(_) => OP_SUFFIX,
    };
    let at = begin(op, out);
    out.extend_from_slice(&names.acquire(&p.attr).to_le_bytes());
    match &p.test {
        Test::Cmp(op, lit) => {
            out.push(cmp_to_u8(*op));
            emit_lit(lit, out);
        }
        Test::In { items, .. } => {
            // The parser bounds lists to 256 items.
            out.extend_from_slice(&(items.len() as u16).to_le_bytes());
            for lit in items {
                emit_lit(lit, out);
            }
        }
        Test::Regex(r) => out.extend_from_slice(&pool.acquire(r.pattern()).to_le_bytes()),
        Test::Exists => {}
        Test::Prefix(s) | Test::Suffix(s) => emit_bytes(s.as_bytes(), out),
    }
    finish(at, out);
}

fn emit_bytes(b: &[u8], out: &mut Vec<u8>) {
    // Filter text is at most 4 KiB, so any literal fits in u16.
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn emit_lit(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            out.push(LIT_STR);
            emit_bytes(s.as_bytes(), out);
        }
        Value::Int(i) => {
            out.push(LIT_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(LIT_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Bool(b) => {
            out.push(LIT_BOOL);
            out.push(u8::from(*b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sift_protocol::{Attributes, Filter};

    fn attrs(pairs: &[(&str, Value)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn program_agrees_with_reference_on_examples() {
        let mut pool = RegexPool::default();
        let mut names = AttrNames::default();
        let a = attrs(&[
            ("s", Value::Str("hello".into())),
            ("i", Value::Int(3)),
            ("f", Value::Float(2.5)),
            ("b", Value::Bool(true)),
        ]);
        for text in [
            "",
            "i == 3.0",
            "s ~ \"^h\" && !(f < 2) || b == false",
            "i in [1, \"3\", 3.0] && s not in [\"x\"]",
            "prefix(s, \"he\") && suffix(s, \"lo\") && exists(f)",
            "missing != 1 || not (i > 2 and f <= 2.5)",
        ] {
            let f = Filter::parse(text).unwrap();
            let p = Prog::compile(f.expr(), &mut pool, &mut names);
            let view = EventView::new(&names, &a);
            assert_eq!(p.eval(&view, &pool), f.matches(&a), "{text}");
            p.release(&mut pool, &mut names);
        }
        assert_eq!(pool.len(), 0, "every regex reference is released");
        assert_eq!(
            names.room(),
            crate::attrs::ATTR_NAMES_MAX,
            "every name is released"
        );
    }

    #[test]
    fn common_filters_fit_inline() {
        let mut pool = RegexPool::default();
        let mut names = AttrNames::default();
        for text in [
            "customer == \"c12345\"",
            "price >= 12.5 && price < 13.0",
            "qty in [1, 2]",
        ] {
            let f = Filter::parse(text).unwrap();
            let p = Prog::compile(f.expr(), &mut pool, &mut names);
            assert_eq!(p.heap_len(), 0, "{text}");
        }
    }
}
