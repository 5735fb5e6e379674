//! `sift filter test` end to end: the real binary, its output and exit codes.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn sift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sift"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn match_and_no_match() {
    let attrs = r#"{"region": "eu", "price": 12.5, "qty": 3, "vip": true}"#;
    let (code, out, _) = sift(&[
        "filter",
        "test",
        r#"region == "eu" && price > 10"#,
        "--attrs",
        attrs,
    ]);
    assert_eq!((code, out.as_str()), (0, "match\n"));
    let (code, out, _) = sift(&[
        "filter",
        "test",
        "qty >= 4 || vip == false",
        "--attrs",
        attrs,
    ]);
    assert_eq!((code, out.as_str()), (1, "no match\n"));
    // Integers and floats compare numerically; a missing attribute makes `!=` false.
    let (code, _, _) = sift(&["filter", "test", "qty == 3.0", "--attrs", attrs]);
    assert_eq!(code, 0);
    let (code, _, _) = sift(&["filter", "test", "missing != 1", "--attrs", attrs]);
    assert_eq!(code, 1);
    let (code, _, _) = sift(&["filter", "test", "", "--attrs", attrs]);
    assert_eq!(code, 0, "the empty filter matches everything");
    // JSON integers are 64-bit integers, other numbers floats, as in the filter language.
    let big = r#"{"a": -9223372036854775808, "b": 2.0, "c": 1e2}"#;
    let filter = "a == -9223372036854775808 && b == 2 && c == 100";
    let (code, _, _) = sift(&["filter", "test", filter, "--attrs", big]);
    assert_eq!(code, 0);
}

#[test]
fn topic_and_pattern() {
    let args = |topic: &str, pattern: &str| {
        let (code, _, err) = sift(&["filter", "test", "", "--topic", topic, "--pattern", pattern]);
        (code, err)
    };
    assert_eq!(args("orders.eu.created", "orders.*.created").0, 0);
    assert_eq!(args("orders", "orders.>").0, 1);
    let (code, err) = args("orders.*", "orders.>");
    assert_eq!(code, 2);
    assert!(err.contains("token 1") && err.contains("wildcard"), "{err}");
    let (code, err) = args("orders.eu", "orders.>.x");
    assert_eq!(code, 2);
    assert!(err.contains("--pattern"), "{err}");
}

#[test]
fn bad_filter_shows_a_caret() {
    let (code, out, err) = sift(&["filter", "test", "price >= && qty == 1"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].contains("at byte 9") && lines[0].contains("expected a literal"),
        "{err}"
    );
    assert_eq!(lines[1], "price >= && qty == 1");
    assert_eq!(lines[2], "         ^");
}

#[test]
fn bad_attrs_are_refused() {
    let long = format!(r#"{{"a": "{}"}}"#, "x".repeat(4097));
    for attrs in [
        r#"[1]"#,
        r#"{"a": null}"#,
        r#"{"a": [1]}"#,
        r#"{"bad name": 1}"#,
        "{",
        r#"{"a": 9223372036854775808}"#,
        r#"{"a": 18446744073709551616}"#,
        r#"{"a": -9223372036854775809}"#,
        r#"{"a": 1e999}"#,
        &long,
    ] {
        let (code, _, err) = sift(&["filter", "test", "a == 1", "--attrs", attrs]);
        assert_eq!(code, 2, "{attrs}");
        assert!(err.starts_with("error:"), "{attrs}: {err}");
    }
}
