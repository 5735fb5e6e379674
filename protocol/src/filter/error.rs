//! Filter parse errors: a byte offset into the filter text plus what went wrong.

/// A filter that could not be parsed or breaks a limit. `offset` is the byte offset in the
/// filter text where the problem starts; [`FilterError::caret`] renders it for a terminal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct FilterError {
    /// Byte offset into the filter text.
    pub offset: usize,
    /// What went wrong.
    pub kind: FilterErrorKind,
}

/// What went wrong in a filter. Every variant is a refusal: nothing was subscribed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterErrorKind {
    /// The text is longer than the limit.
    #[error("filter is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the text, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A token that does not fit the grammar at this point.
    #[error("expected {expected}, found {found}")]
    Unexpected {
        /// What the grammar allows here.
        expected: &'static str,
        /// What was found, described for a user.
        found: String,
    },
    /// A string literal with no closing quote.
    #[error("string literal is not terminated")]
    UnterminatedString,
    /// A backslash escape that the grammar does not have.
    #[error("invalid escape {escape:?} in string literal (allowed: \\\" \\\\ \\n \\t \\u{{...}})")]
    InvalidEscape {
        /// The escape as written.
        escape: String,
    },
    /// A number literal that is not a JSON number or does not fit.
    #[error("invalid number {text:?}: {reason}")]
    InvalidNumber {
        /// The literal as written.
        text: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An ordering comparison (`<`, `<=`, `>`, `>=`) with a boolean literal.
    #[error("booleans support only '==' and '!=', not ordering comparisons")]
    BooleanOrdering,
    /// An attribute name longer than the limit.
    #[error("attribute name is {len} bytes long; the limit is {max} bytes")]
    NameTooLong {
        /// Length of the name, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// More predicates than the limit.
    #[error("too many predicates; the limit is {max}")]
    TooManyPredicates {
        /// The limit.
        max: usize,
    },
    /// Nesting of groups and negations deeper than the limit.
    #[error("nesting is too deep; the limit is {max} levels of '(' and '!'")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// An `in` list longer than the limit.
    #[error("'in' list has too many items; the limit is {max}")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
    /// A regex that the `regex` crate refuses.
    #[error("invalid regex: {message}")]
    Regex {
        /// The regex crate's message.
        message: String,
    },
    /// A regex whose compiled form exceeds the size bound.
    #[error("regex is too large once compiled; the limit is {max} bytes")]
    RegexTooBig {
        /// The limit, in bytes.
        max: usize,
    },
}

impl FilterError {
    pub(crate) fn new(offset: usize, kind: FilterErrorKind) -> FilterError {
        FilterError { offset, kind }
    }

    /// Renders the error for a terminal: the message, the filter text, and a caret under the
    /// offending character.
    ///
    /// ```
    /// let text = "a == 1 &&";
    /// let err = sift_protocol::Filter::parse(text).unwrap_err();
    /// let shown = err.caret(text);
    /// assert!(shown.ends_with("         ^"));
    /// ```
    pub fn caret(&self, text: &str) -> String {
        // Show one line: the one holding the offset; count columns in characters.
        let mut offset = self.offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let column = text[line_start..offset].chars().count();
        format!(
            "{}\n{}\n{}^",
            self,
            &text[line_start..line_end],
            " ".repeat(column)
        )
    }
}

/// Writes a short description of a character for "found …" messages.
pub(crate) fn describe_char(c: char) -> String {
    format!("{c:?}")
}
