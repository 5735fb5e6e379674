//! The filter lexer: text in, tokens with byte offsets out. Never panics on any input.

use super::ast::CmpOp;
use super::error::{describe_char, FilterError, FilterErrorKind};

/// One token. Words are names or keywords; the parser tells them apart.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok<'a> {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    AndAnd,
    OrOr,
    Bang,
    Tilde,
    Cmp(CmpOp),
    Str(String),
    Int(i64),
    Float(f64),
    Word(&'a str),
    Eof,
}

impl Tok<'_> {
    /// A description of the token for "found …" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::OrOr => "'||'".into(),
            Tok::Bang => "'!'".into(),
            Tok::Tilde => "'~'".into(),
            Tok::Cmp(op) => format!("'{}'", op.as_str()),
            Tok::Str(_) => "a string".into(),
            Tok::Int(_) | Tok::Float(_) => "a number".into(),
            Tok::Word(w) => format!("'{w}'"),
            Tok::Eof => "the end of the filter".into(),
        }
    }
}

/// Splits `text` into tokens, each with the byte offset where it starts. The last token is
/// `Eof` at `text.len()`.
pub(crate) fn tokenize(text: &str) -> Result<Vec<(Tok<'_>, usize)>, FilterError> {
    let mut lx = Lexer { text, pos: 0 };
    let mut out = Vec::new();
    loop {
        lx.skip_whitespace();
        let start = lx.pos;
        let tok = lx.next_token()?;
        let eof = tok == Tok::Eof;
        out.push((tok, start));
        if eof {
            return Ok(out);
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

impl<'a> Lexer<'a> {
    fn peek_byte(&self, ahead: usize) -> Option<u8> {
        self.text.as_bytes().get(self.pos + ahead).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(c) = self.text[self.pos..].chars().next() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn err(&self, offset: usize, kind: FilterErrorKind) -> FilterError {
        FilterError::new(offset, kind)
    }

    fn unexpected_char(&self, expected: &'static str) -> FilterError {
        let found = match self.text[self.pos..].chars().next() {
            Some(c) => describe_char(c),
            None => "the end of the filter".into(),
        };
        self.err(self.pos, FilterErrorKind::Unexpected { expected, found })
    }

    /// Consumes `n` bytes and returns `tok`.
    fn take(&mut self, n: usize, tok: Tok<'a>) -> Result<Tok<'a>, FilterError> {
        self.pos += n;
        Ok(tok)
    }

    fn next_token(&mut self) -> Result<Tok<'a>, FilterError> {
        let Some(b) = self.peek_byte(0) else {
            return Ok(Tok::Eof);
        };
        let next = self.peek_byte(1);
        match b {
            b'(' => self.take(1, Tok::LParen),
            b')' => self.take(1, Tok::RParen),
            b'[' => self.take(1, Tok::LBracket),
            b']' => self.take(1, Tok::RBracket),
            b',' => self.take(1, Tok::Comma),
            b'~' => self.take(1, Tok::Tilde),
            b'&' if next == Some(b'&') => self.take(2, Tok::AndAnd),
            b'|' if next == Some(b'|') => self.take(2, Tok::OrOr),
            b'&' => Err(self.unexpected_char("'&&' (a single '&' is not an operator)")),
            b'|' => Err(self.unexpected_char("'||' (a single '|' is not an operator)")),
            b'!' if next == Some(b'=') => self.take(2, Tok::Cmp(CmpOp::Ne)),
            b'!' => self.take(1, Tok::Bang),
            b'=' if next == Some(b'=') => self.take(2, Tok::Cmp(CmpOp::Eq)),
            b'=' => Err(self.unexpected_char("'==' (a single '=' is not an operator)")),
            b'<' if next == Some(b'=') => self.take(2, Tok::Cmp(CmpOp::Le)),
            b'<' => self.take(1, Tok::Cmp(CmpOp::Lt)),
            b'>' if next == Some(b'=') => self.take(2, Tok::Cmp(CmpOp::Ge)),
            b'>' => self.take(1, Tok::Cmp(CmpOp::Gt)),
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b if is_name_start(b) => Ok(self.word()),
            _ => Err(self.unexpected_char("an attribute name, a literal, an operator or '('")),
        }
    }

    fn word(&mut self) -> Tok<'a> {
        let start = self.pos;
        self.pos += 1;
        while self.peek_byte(0).is_some_and(is_name_continue) {
            self.pos += 1;
        }
        Tok::Word(&self.text[start..self.pos])
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek_byte(0).is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<Tok<'a>, FilterError> {
        let start = self.pos;
        let invalid = |lx: &Lexer<'a>, reason| {
            // Report the whole run of number-like characters.
            let mut end = lx.pos;
            let bytes = lx.text.as_bytes();
            while end < bytes.len() && (is_name_continue(bytes[end]) || bytes[end] == b'+') {
                end += 1;
            }
            let text = lx.text[start..end].to_owned();
            FilterError::new(start, FilterErrorKind::InvalidNumber { text, reason })
        };
        if self.peek_byte(0) == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 {
            return Err(invalid(self, "expected a digit"));
        }
        if int_digits > 1 && self.text.as_bytes()[int_start] == b'0' {
            return Err(invalid(self, "leading zeros are not allowed"));
        }
        let mut is_float = false;
        if self.peek_byte(0) == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(invalid(self, "expected a digit after '.'"));
            }
            is_float = true;
        }
        if matches!(self.peek_byte(0), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek_byte(0), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(invalid(self, "expected a digit in the exponent"));
            }
            is_float = true;
        }
        if self.peek_byte(0).is_some_and(is_name_continue) {
            return Err(invalid(self, "unexpected character after the number"));
        }
        let text = &self.text[start..self.pos];
        if is_float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err(invalid(self, "out of the 64-bit float range")),
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| invalid(self, "out of the 64-bit signed integer range"))
        }
    }

    fn string(&mut self) -> Result<Tok<'a>, FilterError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.pos..].chars().next() else {
                return Err(self.err(start, FilterErrorKind::UnterminatedString));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(Tok::Str(out));
                }
                '\\' => out.push(self.escape()?),
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// Reads one escape at `self.pos` (the backslash).
    fn escape(&mut self) -> Result<char, FilterError> {
        let start = self.pos;
        let bad = |lx: &Lexer<'a>, end: usize| {
            let end = end.min(lx.text.len());
            let mut end = end;
            while !lx.text.is_char_boundary(end) {
                end += 1;
            }
            let escape = lx.text[start..end].to_owned();
            FilterError::new(start, FilterErrorKind::InvalidEscape { escape })
        };
        let simple = match self.peek_byte(1) {
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            Some(b'n') => Some('\n'),
            Some(b't') => Some('\t'),
            Some(b'u') => None,
            None => return Err(self.err(start, FilterErrorKind::UnterminatedString)),
            Some(_) => return Err(bad(self, start + 2)),
        };
        if let Some(c) = simple {
            self.pos += 2;
            return Ok(c);
        }
        // \u{X...}: one to six hex digits naming a Unicode scalar value.
        if self.peek_byte(2) != Some(b'{') {
            return Err(bad(self, start + 3));
        }
        let digits_start = start + 3;
        let rest = &self.text[digits_start..];
        let Some(close) = rest.find('}') else {
            return Err(bad(self, self.text.len()));
        };
        let hex = &rest[..close];
        let end = digits_start + close + 1;
        if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(self, end));
        }
        let c = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
        match c {
            Some(c) => {
                self.pos = end;
                Ok(c)
            }
            None => Err(bad(self, end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok<'_>> {
        tokenize(s).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            toks("a.b-c >= -1.5e3 && x != \"q\\\"\\u{e9}\""),
            vec![
                Tok::Word("a.b-c"),
                Tok::Cmp(CmpOp::Ge),
                Tok::Float(-1500.0),
                Tok::AndAnd,
                Tok::Word("x"),
                Tok::Cmp(CmpOp::Ne),
                Tok::Str("q\"é".into()),
                Tok::Eof
            ]
        );
        assert_eq!(toks("!x"), vec![Tok::Bang, Tok::Word("x"), Tok::Eof]);
        assert_eq!(
            toks("0 -0 12"),
            vec![Tok::Int(0), Tok::Int(0), Tok::Int(12), Tok::Eof]
        );
    }

    #[test]
    fn bad_numbers_and_strings() {
        let e = |s| tokenize(s).unwrap_err();
        assert_eq!(e("01").offset, 0);
        assert!(matches!(
            e("1.").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert!(matches!(
            e("1e").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert!(matches!(
            e("- 1").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert!(matches!(
            e("99999999999999999999").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert!(matches!(
            e("1e999").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert!(matches!(
            e("12ab").kind,
            FilterErrorKind::InvalidNumber { .. }
        ));
        assert_eq!(e("x == \"abc").kind, FilterErrorKind::UnterminatedString);
        assert_eq!(e("x == \"abc").offset, 5);
        assert_eq!(
            e("\"a\\qb\"").kind,
            FilterErrorKind::InvalidEscape {
                escape: "\\q".into()
            }
        );
        assert!(matches!(
            e("\"\\u{d800}\"").kind,
            FilterErrorKind::InvalidEscape { .. }
        ));
        assert!(matches!(
            e("\"\\u{}\"").kind,
            FilterErrorKind::InvalidEscape { .. }
        ));
        assert!(matches!(
            e("\"\\u{1234567}\"").kind,
            FilterErrorKind::InvalidEscape { .. }
        ));
        assert!(matches!(
            e("\"\\ué\"").kind,
            FilterErrorKind::InvalidEscape { .. }
        ));
        assert_eq!(e("a = 1").offset, 2);
        assert_eq!(e("a & b").offset, 2);
        assert_eq!(e("a == 1 # x").offset, 7);
        assert_eq!(e("\"\\").kind, FilterErrorKind::UnterminatedString);
    }
}
