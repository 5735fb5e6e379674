//! Table-driven tests of the filter language: semantics, errors with offsets, limits, and
//! property tests (never panics; printing parses back to the same tree).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::value::Value;

fn attrs() -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("s".into(), Value::Str("hello".into()));
    m.insert("i".into(), Value::Int(3));
    m.insert("f".into(), Value::Float(2.5));
    m.insert("b".into(), Value::Bool(true));
    m.insert("a.b-c_d".into(), Value::Str("x".into()));
    m.insert("big".into(), Value::Int((1 << 53) + 1));
    m.insert("nan".into(), Value::Float(f64::NAN));
    m
}

#[track_caller]
fn check(text: &str, want: bool) {
    let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(f.matches(&attrs()), want, "{text}");
    // The canonical text parses back to the same tree and means the same.
    let printed = f.to_string();
    let again = Filter::parse(&printed).unwrap_or_else(|e| panic!("{printed}: {e}"));
    assert_eq!(again, f, "{text} printed as {printed}");
}

#[test]
fn semantics_table() {
    let table: &[(&str, bool)] = &[
        ("", true),
        ("   ", true),
        ("i == 3", true),
        ("i == 3.0", true),
        ("f == 2.5", true),
        ("i < 3.5", true),
        ("i > 2.9", true),
        ("f >= 2.5 && f <= 2.5", true),
        ("big == 9007199254740992.0", false),
        ("big > 9007199254740992.0", true),
        ("big != 9007199254740992", true),
        ("s == \"hello\"", true),
        ("s != \"hello\"", false),
        ("s == 3", false),
        ("s != 3", true),
        ("i == \"3\"", false),
        ("i != \"3\"", true),
        ("s < 3", false),
        ("s > 3", false),
        ("i < \"a\"", false),
        ("s < \"hellp\"", true),
        ("s > \"hell\"", true),
        ("s >= \"hello\"", true),
        ("b == true", true),
        ("b != false", true),
        ("b == 1", false),
        ("b != 1", true),
        ("i == true", false),
        // Missing attributes: every predicate is false, `!=` and `not in` too.
        ("missing == 1", false),
        ("missing != 1", false),
        ("missing not in [1]", false),
        ("missing in [1]", false),
        ("missing < 1", false),
        ("prefix(missing, \"\")", false),
        ("!(missing == 1)", true),
        ("!(missing != 1)", true),
        ("not missing == 1", true),
        ("exists(i)", true),
        ("exists(missing)", false),
        ("!exists(missing)", true),
        ("i in [1, 2, 3]", true),
        ("i in [1.0, 3.0]", true),
        ("i in [\"3\"]", false),
        ("i not in [\"3\"]", true),
        ("i not in [3]", false),
        ("s in [\"a\", \"hello\"]", true),
        ("s ~ \"ell\"", true),
        ("s ~ \"^ell\"", false),
        ("s ~ \"^h.*o$\"", true),
        ("i ~ \"3\"", false),
        ("prefix(s, \"he\")", true),
        ("prefix(s, \"\")", true),
        ("prefix(s, \"el\")", false),
        ("suffix(s, \"llo\")", true),
        ("suffix(i, \"3\")", false),
        ("a.b-c_d == \"x\"", true),
        // NaN is unordered: equal to nothing, different from everything.
        ("nan == 1", false),
        ("nan != 1", true),
        ("nan < 1", false),
        ("nan >= 1", false),
        // Precedence: not > and > or.
        ("i == 1 || i == 3 && s == \"hello\"", true),
        ("i == 3 || i == 1 && s == \"x\"", true),
        ("(i == 3 || i == 1) && s == \"x\"", false),
        ("!i == 3 || s == \"hello\"", true),
        ("! (i == 3) || s == \"x\"", false),
        ("i == 3 AND s == \"hello\"", true),
        ("i == 1 Or s == \"hello\"", true),
        ("NOT i == 1", true),
        ("i NOT IN [1]", true),
        ("b == TRUE", true),
        ("EXISTS(i) and PREFIX(s, \"h\")", true),
        // Keywords as functions only when called: `prefix` can be an attribute name.
        ("prefix == 1", false),
        ("!!(i == 3)", true),
        ("((((i == 3))))", true),
        ("s == \"\\u{68}ello\"", true),
    ];
    for (text, want) in table {
        check(text, *want);
    }
}

#[track_caller]
fn check_err(text: &str, offset: usize, kind_contains: &str) {
    let err = Filter::parse(text).expect_err(text);
    assert_eq!(err.offset, offset, "{text}: {err}");
    let msg = err.to_string();
    assert!(
        msg.contains(kind_contains),
        "{text}: {msg:?} lacks {kind_contains:?}"
    );
}

#[test]
fn errors_have_offsets_and_expectations() {
    check_err("a ==", 4, "expected a literal");
    check_err("a == 1 &&", 9, "expected a predicate");
    check_err("a == 1 b == 2", 7, "expected '&&', '||'");
    check_err("(a == 1", 7, "expected ')'");
    check_err("a in [1, ]", 9, "expected a literal");
    check_err("a in [1 2]", 8, "expected ',' or ']'");
    check_err("a in 1", 5, "expected '[' to start the list");
    check_err("a not 1", 6, "expected 'in' after 'not'");
    check_err("a 1", 2, "expected a comparison");
    check_err("== 1", 0, "expected a predicate");
    check_err("and == 1", 0, "expected an attribute name");
    check_err("a < true", 4, "booleans support only");
    check_err("a >= false", 5, "booleans support only");
    check_err("a ~ 1", 4, "expected a string literal");
    check_err("a ~ \"(\"", 4, "invalid regex");
    check_err("prefix(a)", 8, "expected ','");
    check_err("prefix(a, 1)", 10, "expected a string literal");
    check_err("exists(1)", 7, "expected an attribute name");
    check_err("a == \"x", 5, "not terminated");
    check_err("a = 1", 2, "'=='");
    check_err("a == 1 & b == 2", 7, "'&&'");
    check_err("a == 01", 5, "leading zeros");
    check_err("a == 9223372036854775808", 5, "integer range");
}

#[test]
fn min_int_parses() {
    // The one negative integer without a positive twin must still parse.
    let f = Filter::parse("a == -9223372036854775808").unwrap();
    assert_eq!(f.to_string(), "a == -9223372036854775808");
}

#[test]
fn limits_are_errors() {
    let long = format!("a == \"{}\"", "x".repeat(FILTER_BYTES));
    assert!(matches!(
        Filter::parse(&long).unwrap_err().kind,
        FilterErrorKind::TooLong { .. }
    ));

    let preds: Vec<String> = (0..65).map(|i| format!("a{i} == 1")).collect();
    let e = Filter::parse(&preds.join(" && ")).unwrap_err();
    assert_eq!(e.kind, FilterErrorKind::TooManyPredicates { max: 64 });
    assert!(Filter::parse(&preds[..64].join(" && ")).is_ok());

    let deep_ok = format!("{}a == 1{}", "(".repeat(16), ")".repeat(16));
    assert!(Filter::parse(&deep_ok).is_ok());
    let deep = format!("{}a == 1{}", "(".repeat(17), ")".repeat(17));
    let e = Filter::parse(&deep).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (16, FilterErrorKind::TooDeep { max: 16 })
    );
    let nots = format!("{}a == 1", "!".repeat(17));
    assert_eq!(
        Filter::parse(&nots).unwrap_err().kind,
        FilterErrorKind::TooDeep { max: 16 }
    );
    // `!(`…`)` is one level: sixteen of them nest fine, and print back the same way.
    let negated_groups = format!("{}a == 1{}", "!(".repeat(16), ")".repeat(16));
    let f = Filter::parse(&negated_groups).unwrap();
    assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
    let nine_nots = Filter::parse("!!!!!!!!!a == 1").unwrap();
    assert_eq!(Filter::parse(&nine_nots.to_string()).unwrap(), nine_nots);
    // Deep input far past the limit is refused without deep recursion.
    let very_deep = "(".repeat(4000);
    assert!(matches!(
        Filter::parse(&very_deep).unwrap_err().kind,
        FilterErrorKind::TooDeep { .. }
    ));

    let items: Vec<String> = (0..257).map(|i| i.to_string()).collect();
    let e = Filter::parse(&format!("a in [{}]", items.join(","))).unwrap_err();
    assert_eq!(e.kind, FilterErrorKind::TooManyItems { max: 256 });
    assert!(Filter::parse(&format!("a in [{}]", items[..256].join(","))).is_ok());

    let name = "n".repeat(129);
    let e = Filter::parse(&format!("{name} == 1")).unwrap_err();
    assert_eq!(e.kind, FilterErrorKind::NameTooLong { len: 129, max: 128 });

    let e = Filter::parse("a ~ \"x{1000}{1000}\"").unwrap_err();
    assert!(
        matches!(
            e.kind,
            FilterErrorKind::RegexTooBig { .. } | FilterErrorKind::Regex { .. }
        ),
        "{e}"
    );
}

const FILTER_BYTES: usize = crate::limits::FILTER_BYTES_MAX;

#[test]
fn too_long_filter_points_at_a_character_boundary() {
    // 4097 bytes whose byte 4096 is inside a two-byte character.
    let text = format!("a{}", "é".repeat(2048));
    let e = Filter::parse(&text).unwrap_err();
    assert!(matches!(
        e.kind,
        FilterErrorKind::TooLong {
            len: 4097,
            max: 4096
        }
    ));
    assert!(text.is_char_boundary(e.offset));
    let shown = e.caret(&text);
    assert!(shown.ends_with('^'));
    // And a made-up offset inside a character renders too.
    let odd = FilterError {
        offset: 2,
        kind: FilterErrorKind::UnterminatedString,
    };
    assert!(odd.caret("aé").ends_with(" ^"));
}

#[test]
fn caret_points_at_the_offending_byte() {
    let text = "s == \"région\" &&";
    let e = Filter::parse(text).unwrap_err();
    let shown = e.caret(text);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines[1], text);
    // The caret sits under the end: columns count characters, not bytes (é is two bytes).
    assert_eq!(lines[2], format!("{}^", " ".repeat(text.chars().count())));
}

// ---- property tests ----

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-c\"\\\\\\n\\té]{0,3}".prop_map(Value::Str),
        (-3i64..4).prop_map(Value::Int),
        prop_oneof![Just(-1.5), Just(0.5), Just(2.0), Just(1e300), Just(-0.0)]
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn arb_pred() -> impl Strategy<Value = Expr> {
    let name = prop_oneof![Just("a"), Just("b"), Just("c.d"), Just("e-f")].prop_map(String::from);
    let op = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge)
    ];
    let test = prop_oneof![
        (op, arb_value()).prop_map(|(op, v)| {
            let v = if op.is_ordering() && matches!(v, Value::Bool(_)) {
                Value::Int(1)
            } else {
                v
            };
            Test::Cmp(op, v)
        }),
        (any::<bool>(), prop::collection::vec(arb_value(), 1..4))
            .prop_map(|(negated, items)| Test::In { negated, items }),
        Just(Test::Exists),
        "[ab]{0,2}".prop_map(Test::Prefix),
        "[ab]{0,2}".prop_map(Test::Suffix),
        prop_oneof![Just("a"), Just("^b+$"), Just("\\d"), Just("a|b")]
            .prop_map(|p| { Test::Regex(RegexLit::new(regex::Regex::new(p).unwrap())) }),
    ];
    (name, test).prop_map(|(attr, test)| Expr::Pred(Predicate { attr, test }))
}

/// Random ASTs of bounded depth, in the shape the parser produces (no single-child And/Or,
/// no And directly inside And unless it came from parentheses — which printing keeps).
pub(crate) fn arb_expr() -> impl Strategy<Value = Expr> {
    arb_pred().prop_recursive(4, 24, 4, expr_levels)
}

fn expr_levels(inner: BoxedStrategy<Expr>) -> impl Strategy<Value = Expr> {
    prop_oneof![
        prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
        prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
        inner.prop_map(|e| Expr::Not(Box::new(e))),
    ]
}

/// Deep, narrow trees: around the nesting limit, so printing must not add any nesting.
fn arb_deep_expr() -> impl Strategy<Value = Expr> {
    arb_pred().prop_recursive(20, 40, 2, expr_levels)
}

/// Nesting depth as the parser counts it: each `!` and each parenthesised group is one level,
/// a negated group (`!(…)`) one in all. Printing parenthesises an `&&` or `||` that sits
/// directly under another `&&` (or an `||` under `||`), and prints `!` as `!(…)`.
fn depth(e: &Expr) -> usize {
    fn go(e: &Expr, under_and: bool, under_or: bool) -> usize {
        match e {
            Expr::Pred(_) => 0,
            Expr::Not(inner) => 1 + go(inner, false, false),
            Expr::And(c) => {
                usize::from(under_and) + c.iter().map(|c| go(c, true, false)).max().unwrap_or(0)
            }
            Expr::Or(c) => {
                usize::from(under_and || under_or)
                    + c.iter().map(|c| go(c, false, true)).max().unwrap_or(0)
            }
        }
    }
    go(e, false, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn printed_filters_parse_back(expr in arb_expr()) {
        let text = expr.to_string();
        let parsed = Filter::parse(&text);
        prop_assert!(parsed.is_ok(), "{} -> {:?}", text, parsed);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.expr(), Some(&expr));
    }

    /// Printing never nests deeper than the tree itself: a tree within the limit prints to
    /// text that parses back to it; only a tree beyond the limit is refused.
    #[test]
    fn deep_printed_filters_parse_back(expr in arb_deep_expr()) {
        let text = expr.to_string();
        match Filter::parse(&text) {
            Ok(f) => prop_assert_eq!(f.expr(), Some(&expr)),
            Err(e) => {
                prop_assert!(depth(&expr) > 16, "{} -> {}", text, e);
                prop_assert_eq!(e.kind, FilterErrorKind::TooDeep { max: 16 });
            }
        }
    }

    #[test]
    fn parser_never_panics_on_random_text(text in "\\PC{0,64}") {
        let _ = Filter::parse(&text);
    }

    #[test]
    fn parser_never_panics_on_filter_like_text(
        text in "[abin!()\\[\\]=<>~&|,\" 0-9.eE+\\-\\\\u{}tfrx]{0,48}"
    ) {
        if let Err(e) = Filter::parse(&text) {
            prop_assert!(e.offset <= text.len());
            let _ = e.caret(&text);
        }
    }
}
