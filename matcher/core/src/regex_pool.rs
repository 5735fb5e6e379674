//! Interned regexes: one `Regex` per distinct pattern in the engine, shared by every
//! subscription that uses it and released when the last one goes.
//!
//! A compiled regex costs kilobytes; subscriptions often repeat patterns, so interning is what
//! keeps memory per subscription bounded when they do. A pattern is compiled lazily, the first
//! time an event needs it: a subscription whose regex is reached through an anchored literal
//! and never hit costs only its pattern text. (The filter parser has already compiled it once,
//! with the same limits, so a later compile cannot fail.) Each pattern is also analysed once
//! for an anchored literal: `^sku-12[0-9]$` can only match values that start with `sku-12`, so
//! the index reaches it through the prefix index instead of running the regex on every event.

use std::cell::OnceCell;

use hashbrown::HashMap;
use regex::{Regex, RegexBuilder};
use regex_syntax::hir::literal::{ExtractKind, Extractor, Seq};
use regex_syntax::hir::{Hir, HirKind, Look};
use sift_protocol::limits::{REGEX_COMPILED_BYTES_MAX, REGEX_DFA_BYTES_MAX};
use slab::Slab;

/// Index of an interned regex; stable while any subscription holds it.
pub(crate) type RegexId = u32;

#[derive(Debug)]
struct Entry {
    pattern: Box<str>,
    regex: OnceCell<Regex>,
    refs: u32,
    anchor: Anchor,
}

/// A literal that every match of a regex starts or ends with, when the regex is anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// Every match is a value starting with these bytes (`^lit…`).
    Prefix(Box<[u8]>),
    /// Every match is a value ending with these bytes (`…lit$`).
    Suffix(Box<[u8]>),
    /// Nothing usable.
    None,
}

#[derive(Debug, Default)]
pub(crate) struct RegexPool {
    by_pattern: HashMap<Box<str>, RegexId>,
    entries: Slab<Entry>,
}

impl RegexPool {
    /// Takes a reference to `pattern` (already validated by the filter parser), interning it
    /// if new.
    pub(crate) fn acquire(&mut self, pattern: &str) -> RegexId {
        if let Some(&id) = self.by_pattern.get(pattern) {
            if let Some(e) = self.entries.get_mut(id as usize) {
                e.refs += 1;
            }
            return id;
        }
        let anchor = anchor_of(pattern);
        let entry = Entry {
            pattern: pattern.into(),
            regex: OnceCell::new(),
            refs: 1,
            anchor,
        };
        let id = self.entries.insert(entry) as RegexId;
        self.by_pattern.insert(pattern.into(), id);
        id
    }

    /// Drops one reference; frees the regex with the last one.
    pub(crate) fn release(&mut self, id: RegexId) {
        let Some(e) = self.entries.get_mut(id as usize) else {
            debug_assert!(false, "release of a free regex id");
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            if let Some(e) = self.entries.try_remove(id as usize) {
                self.by_pattern.remove(&e.pattern);
            }
        }
    }

    fn entry(&self, id: RegexId) -> &Entry {
        match self.entries.get(id as usize) {
            Some(e) => e,
            None => unreachable!("regex id {id} is held by a live subscription"),
        }
    }

    /// The pattern of a held id.
    pub(crate) fn pattern(&self, id: RegexId) -> &str {
        &self.entry(id).pattern
    }

    /// Whether the regex of a held id matches `s`, compiling it on first use.
    pub(crate) fn is_match(&self, id: RegexId, s: &str) -> bool {
        let e = self.entry(id);
        let regex = e.regex.get_or_init(|| {
            let built = RegexBuilder::new(&e.pattern)
                .size_limit(REGEX_COMPILED_BYTES_MAX)
                .dfa_size_limit(REGEX_DFA_BYTES_MAX)
                .build();
            // The parser compiled this very pattern with these limits, so this cannot fail;
            // were it to, the empty class (which matches nothing) is the safe stand-in.
            debug_assert!(
                built.is_ok(),
                "pattern {:?} compiled at parse time",
                e.pattern
            );
            built.unwrap_or_else(|_| never())
        });
        regex.is_match(s)
    }

    /// The anchored literal of a held id.
    pub(crate) fn anchor(&self, id: RegexId) -> &Anchor {
        &self.entry(id).anchor
    }

    /// Distinct patterns held.
    pub(crate) fn len(&self) -> usize {
        self.by_pattern.len()
    }

    /// How many patterns are compiled now (the others have not been needed yet).
    pub(crate) fn compiled(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| e.regex.get().is_some())
            .count()
    }
}

/// A regex that matches nothing.
fn never() -> Regex {
    match Regex::new(r"[^\s\S]") {
        Ok(r) => r,
        Err(_) => unreachable!("a constant pattern"),
    }
}

/// Longest literals an anchor may be made of before it is not worth extracting.
const ANCHOR_LITERALS_MAX: usize = 64;

/// Finds a literal every match must start (or end) the haystack with: the pattern is a
/// concatenation beginning with `^`/`\A` (or ending with `$`/`\z`), and the literals that the
/// rest can start (end) with share a non-empty common prefix (suffix).
fn anchor_of(pattern: &str) -> Anchor {
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Anchor::None;
    };
    let HirKind::Concat(parts) = hir.kind() else {
        return Anchor::None;
    };
    let extract = |prefix: bool, rest: &[Hir]| -> Option<Box<[u8]>> {
        let mut ex = Extractor::new();
        let kind = if prefix {
            ExtractKind::Prefix
        } else {
            ExtractKind::Suffix
        };
        ex.kind(kind).limit_total(ANCHOR_LITERALS_MAX);
        let seq = ex.extract(&Hir::concat(rest.to_vec()));
        common(&seq, prefix)
    };
    if let (Some(first), Some(rest)) = (parts.first(), parts.get(1..)) {
        if matches!(first.kind(), HirKind::Look(Look::Start)) {
            if let Some(p) = extract(true, rest) {
                return Anchor::Prefix(p);
            }
        }
    }
    if let Some((last, rest)) = parts.split_last() {
        if matches!(last.kind(), HirKind::Look(Look::End)) {
            if let Some(s) = extract(false, rest) {
                return Anchor::Suffix(s);
            }
        }
    }
    Anchor::None
}

/// The longest common prefix (or suffix) of a finite literal sequence, if non-empty.
fn common(seq: &Seq, prefix: bool) -> Option<Box<[u8]>> {
    let lits = seq.literals()?;
    let first = lits.first()?.as_bytes();
    let mut len = first.len();
    for lit in &lits[1..] {
        let b = lit.as_bytes();
        let shared = if prefix {
            first.iter().zip(b).take_while(|(x, y)| x == y).count()
        } else {
            first
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take_while(|(x, y)| x == y)
                .count()
        };
        len = len.min(shared);
    }
    if len == 0 {
        return None;
    }
    Some(if prefix {
        first[..len].into()
    } else {
        first[first.len() - len..].into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Anchor {
        Anchor::Prefix(s.as_bytes().into())
    }

    fn s(x: &str) -> Anchor {
        Anchor::Suffix(x.as_bytes().into())
    }

    #[test]
    fn anchors() {
        assert_eq!(anchor_of("^sku-012[0-9]{2}$"), p("sku-012"));
        assert_eq!(anchor_of(r"\Aab"), p("ab"));
        assert_eq!(anchor_of("^(ab|ac)d"), p("a"));
        assert_eq!(anchor_of("^ab*"), p("a"));
        assert_eq!(anchor_of("1234$"), s("1234"));
        assert_eq!(anchor_of("x(ab|cb)$"), s("b"));
        // Not anchored, or nothing literal, or alternation of anchors: no anchor.
        for none in [
            "ab", "^", "^$", "^.*x", "^a|b", "(?m)^ab", "^(?i)xyz", "a$|b", "^[a-z]",
        ] {
            assert_eq!(anchor_of(none), Anchor::None, "{none}");
        }
    }
}
