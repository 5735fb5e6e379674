//! Topics and patterns, with exactly the NATS subject rules.
//!
//! A topic is tokens separated by `.`; a token is non-empty, has no `.` and no whitespace, and
//! is not `*` or `>`. Whitespace is what nats-server refuses in subjects — space, `\t`, `\n`,
//! `\r` and form feed — so every topic Sift accepts, NATS accepts too; Sift also refuses NUL,
//! as nats-server does for client connections. A pattern may also use `*` (exactly one token) and `>` (one or more
//! tokens, last only). Both are at most [`TOPIC_BYTES_MAX`] bytes.

use std::fmt;

use crate::limits::TOPIC_BYTES_MAX;

/// Why a topic or pattern was refused. Each variant names the bad token so users can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The text was empty.
    #[error("topic is empty")]
    Empty,
    /// The text is longer than the limit.
    #[error("topic is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the text, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A token is empty (leading, trailing or doubled `.`).
    #[error("token {index} is empty (leading, trailing or doubled '.')")]
    EmptyToken {
        /// Zero-based index of the empty token.
        index: usize,
    },
    /// A token contains whitespace (space, tab, newline, carriage return, form feed) or NUL.
    #[error("token {index} ({token:?}) contains whitespace or NUL")]
    Whitespace {
        /// Zero-based index of the token.
        index: usize,
        /// The token.
        token: String,
    },
    /// A wildcard appears where only a topic is allowed (for example when publishing).
    #[error("token {index} ({token:?}) is a wildcard; a topic cannot contain wildcards")]
    WildcardInTopic {
        /// Zero-based index of the token.
        index: usize,
        /// The wildcard token.
        token: String,
    },
    /// `>` appears before the last token.
    #[error("token {index} is '>', which is only allowed as the last token")]
    TailNotLast {
        /// Zero-based index of the `>` token.
        index: usize,
    },
}

/// A valid topic: what events are published to. Cheap to compare; derefs to `&str`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

/// A valid pattern: a topic whose tokens may be `*` or (last) `>`. A literal topic is a
/// pattern without wildcards.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    text: String,
    literal: bool,
}

/// One token of a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternToken<'a> {
    /// A literal token.
    Literal(&'a str),
    /// `*`: exactly one token.
    Star,
    /// `>`: one or more tokens (always last).
    Tail,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: TOPIC_BYTES_MAX,
        });
    }
    Ok(())
}

/// Checks one token's characters; returns whether it is a wildcard (`*` or `>`).
fn check_token(index: usize, token: &str) -> Result<Option<PatternToken<'_>>, TopicError> {
    if token.is_empty() {
        return Err(TopicError::EmptyToken { index });
    }
    if token
        .bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0))
    {
        return Err(TopicError::Whitespace {
            index,
            token: token.to_owned(),
        });
    }
    match token {
        "*" => Ok(Some(PatternToken::Star)),
        ">" => Ok(Some(PatternToken::Tail)),
        _ => Ok(None),
    }
}

impl Topic {
    /// Parses a topic. Wildcards are refused: publishing to a pattern is an error.
    ///
    /// ```
    /// use sift_protocol::Topic;
    /// assert!(Topic::parse("orders.eu.created").is_ok());
    /// assert!(Topic::parse("orders.*").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        check_common(s)?;
        for (index, token) in s.split('.').enumerate() {
            if check_token(index, token)?.is_some() {
                return Err(TopicError::WildcardInTopic {
                    index,
                    token: token.to_owned(),
                });
            }
        }
        Ok(Topic(s.to_owned()))
    }

    /// The topic's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's tokens, in order.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl Pattern {
    /// Parses a pattern (or a plain topic, which is a pattern without wildcards).
    ///
    /// ```
    /// use sift_protocol::{Pattern, Topic};
    /// let p = Pattern::parse("orders.*.created").unwrap();
    /// assert!(p.matches(&Topic::parse("orders.eu.created").unwrap()));
    /// assert!(Pattern::parse("orders.>.x").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        check_common(s)?;
        let count = s.split('.').count();
        let mut literal = true;
        for (index, token) in s.split('.').enumerate() {
            match check_token(index, token)? {
                Some(PatternToken::Tail) if index + 1 != count => {
                    return Err(TopicError::TailNotLast { index })
                }
                Some(_) => literal = false,
                None => {}
            }
        }
        Ok(Pattern {
            text: s.to_owned(),
            literal,
        })
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard, i.e. it is a plain topic.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// The pattern as a topic, when it has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        self.literal.then(|| Topic(self.text.clone()))
    }

    /// The pattern's tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = PatternToken<'_>> + '_ {
        self.text.split('.').map(|t| match t {
            "*" => PatternToken::Star,
            ">" => PatternToken::Tail,
            t => PatternToken::Literal(t),
        })
    }

    /// Whether the pattern matches `topic` (NATS semantics: `a.>` does not match `a`).
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_tokens = topic.tokens();
        for p in self.tokens() {
            match p {
                PatternToken::Tail => return topic_tokens.next().is_some(),
                PatternToken::Star => {
                    if topic_tokens.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(l) => {
                    if topic_tokens.next() != Some(l) {
                        return false;
                    }
                }
            }
        }
        topic_tokens.next().is_none()
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Pattern {
        Pattern {
            text: t.0,
            literal: true,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::ops::Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn topic_rules() {
        for ok in [
            "a",
            "orders.eu.created",
            "a-b.c_d.é",
            "x.y.z.1.2.3",
            "a*b",
            "a>b",
        ] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(Topic::parse(".a"), Err(TopicError::EmptyToken { index: 0 }));
        assert_eq!(
            Topic::parse("a..b"),
            Err(TopicError::EmptyToken { index: 1 })
        );
        assert_eq!(Topic::parse("a."), Err(TopicError::EmptyToken { index: 1 }));
        // NATS's whitespace, and NUL; other Unicode spaces are ordinary characters, as in NATS.
        for bad in ["a\tb", "a\nb", "a\rb", "a\x0cb", "a\0b"] {
            assert!(
                matches!(Topic::parse(bad), Err(TopicError::Whitespace { .. })),
                "{bad:?}"
            );
        }
        assert!(Topic::parse("a\u{a0}b.c\u{b}d").is_ok());
        assert_eq!(
            Topic::parse("a.b c"),
            Err(TopicError::Whitespace {
                index: 1,
                token: "b c".into()
            })
        );
        assert_eq!(
            Topic::parse("a.*"),
            Err(TopicError::WildcardInTopic {
                index: 1,
                token: "*".into()
            })
        );
        assert_eq!(
            Topic::parse(">"),
            Err(TopicError::WildcardInTopic {
                index: 0,
                token: ">".into()
            })
        );
        let long = "a".repeat(257);
        assert_eq!(
            Topic::parse(&long),
            Err(TopicError::TooLong { len: 257, max: 256 })
        );
        assert!(Topic::parse(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn error_names_the_token() {
        let e = Topic::parse("orders.*.x").unwrap_err().to_string();
        assert!(e.contains("token 1") && e.contains("\"*\""), "{e}");
        let e = Pattern::parse("orders.>.x").unwrap_err().to_string();
        assert!(e.contains("token 1") && e.contains("'>'"), "{e}");
    }

    #[test]
    fn pattern_rules() {
        assert!(Pattern::parse("a.*.c").is_ok());
        assert!(Pattern::parse(">").is_ok());
        assert!(Pattern::parse("*").is_ok());
        assert!(Pattern::parse("a.>").is_ok());
        assert_eq!(
            Pattern::parse("a.>.b"),
            Err(TopicError::TailNotLast { index: 1 })
        );
        assert!(Pattern::parse("a.b").unwrap().is_literal());
        assert!(!Pattern::parse("a.*").unwrap().is_literal());
    }

    #[test]
    fn pattern_matching_is_nats() {
        let cases = [
            ("orders.*.created", "orders.eu.created", true),
            ("orders.*.created", "orders.eu.x.created", false),
            ("orders.>", "orders", false),
            ("orders.>", "orders.eu", true),
            ("orders.>", "orders.eu.created", true),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("a.b", "a.b", true),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("*.b.>", "a.b.c.d", true),
            ("*.b.>", "a.b", false),
        ];
        for (p, topic, want) in cases {
            assert_eq!(
                Pattern::parse(p).unwrap().matches(&t(topic)),
                want,
                "{p} vs {topic}"
            );
        }
    }
}
