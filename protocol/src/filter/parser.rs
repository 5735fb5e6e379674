//! Recursive-descent parser for the filter grammar of DESIGN.md.
//!
//! Recursion only happens through `(` and `!`/`not`, both counted against
//! [`FILTER_NESTING_MAX`]; `&&`/`||` chains are loops. So the stack depth is bounded whatever
//! the input.

use super::ast::{Expr, Predicate, RegexLit, Test};
use super::error::{FilterError, FilterErrorKind};
use super::lexer::{tokenize, Tok};
use crate::limits::{
    ATTR_NAME_BYTES_MAX, FILTER_BYTES_MAX, FILTER_IN_ITEMS_MAX, FILTER_NESTING_MAX,
    FILTER_PREDICATES_MAX, REGEX_COMPILED_BYTES_MAX, REGEX_DFA_BYTES_MAX,
};
use crate::value::Value;

/// Parses `text`; `Ok(None)` for an empty (match-all) filter. Returns the predicate count too.
pub(crate) fn parse(text: &str) -> Result<(Option<Expr>, usize), FilterError> {
    if text.len() > FILTER_BYTES_MAX {
        // Point at the first character that does not fit.
        let mut at = FILTER_BYTES_MAX;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let kind = FilterErrorKind::TooLong {
            len: text.len(),
            max: FILTER_BYTES_MAX,
        };
        return Err(FilterError::new(at, kind));
    }
    let tokens = tokenize(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        predicates: 0,
    };
    if p.peek() == &Tok::Eof {
        return Ok((None, 0));
    }
    let expr = p.or(0)?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("'&&', '||', 'and', 'or' or the end of the filter"));
    }
    Ok((Some(expr), p.predicates))
}

struct Parser<'a> {
    tokens: Vec<(Tok<'a>, usize)>,
    pos: usize,
    predicates: usize,
}

fn keyword(tok: &Tok<'_>, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

const RESERVED: [&str; 6] = ["and", "or", "not", "in", "true", "false"];

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok<'a> {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn peek_at(&self, ahead: usize) -> &Tok<'a> {
        &self.tokens[(self.pos + ahead).min(self.tokens.len() - 1)].0
    }

    fn offset(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].1
    }

    fn bump(&mut self) -> Tok<'a> {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self, expected: &'static str) -> FilterError {
        let found = self.peek().describe();
        FilterError::new(
            self.offset(),
            FilterErrorKind::Unexpected { expected, found },
        )
    }

    fn expect(&mut self, want: &Tok<'_>, expected: &'static str) -> Result<(), FilterError> {
        if self.peek() == want {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut children = vec![self.and(depth)?];
        while matches!(self.peek(), Tok::OrOr) || keyword(self.peek(), "or") {
            self.bump();
            children.push(self.and(depth)?);
        }
        Ok(if children.len() == 1 {
            children.remove(0)
        } else {
            Expr::Or(children)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut children = vec![self.unary(depth)?];
        while matches!(self.peek(), Tok::AndAnd) || keyword(self.peek(), "and") {
            self.bump();
            children.push(self.unary(depth)?);
        }
        Ok(if children.len() == 1 {
            children.remove(0)
        } else {
            Expr::And(children)
        })
    }

    fn deeper(&self, depth: usize) -> Result<usize, FilterError> {
        if depth >= FILTER_NESTING_MAX {
            let kind = FilterErrorKind::TooDeep {
                max: FILTER_NESTING_MAX,
            };
            return Err(FilterError::new(self.offset(), kind));
        }
        Ok(depth + 1)
    }

    /// A negation, a parenthesised group or a predicate. Each `!`/`not` and each `(` is one
    /// nesting level, except that `!(` … `)` counts once: that is how negations of groups
    /// are written, and how [`Expr`]'s printing writes every negation.
    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let tok = self.peek();
        if matches!(tok, Tok::Bang) || keyword(tok, "not") {
            let depth = self.deeper(depth)?;
            self.bump();
            if matches!(self.peek(), Tok::LParen) {
                self.bump();
                let inner = self.or(depth)?;
                self.expect(&Tok::RParen, "')'")?;
                return Ok(Expr::Not(Box::new(inner)));
            }
            return Ok(Expr::Not(Box::new(self.unary(depth)?)));
        }
        if matches!(tok, Tok::LParen) {
            let depth = self.deeper(depth)?;
            self.bump();
            let inner = self.or(depth)?;
            self.expect(&Tok::RParen, "')'")?;
            return Ok(inner);
        }
        if let Tok::Word(_) = tok {
            return self.predicate();
        }
        Err(self.unexpected("a predicate, '(' or '!'"))
    }

    fn predicate(&mut self) -> Result<Expr, FilterError> {
        if self.predicates >= FILTER_PREDICATES_MAX {
            let kind = FilterErrorKind::TooManyPredicates {
                max: FILTER_PREDICATES_MAX,
            };
            return Err(FilterError::new(self.offset(), kind));
        }
        self.predicates += 1;
        let is_call = matches!(self.peek_at(1), Tok::LParen);
        for (kw, build) in FUNCTIONS {
            if is_call && keyword(self.peek(), kw) {
                self.bump();
                return build(self).map(Expr::Pred);
            }
        }
        let attr = self.name()?;
        let test = match self.peek().clone() {
            Tok::Cmp(op) => {
                self.bump();
                let at = self.offset();
                let lit = self.literal()?;
                if op.is_ordering() && matches!(lit, Value::Bool(_)) {
                    return Err(FilterError::new(at, FilterErrorKind::BooleanOrdering));
                }
                Test::Cmp(op, lit)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("in") => {
                self.bump();
                Test::In {
                    negated: false,
                    items: self.list()?,
                }
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("not") => {
                self.bump();
                if !keyword(self.peek(), "in") {
                    return Err(self.unexpected("'in' after 'not'"));
                }
                self.bump();
                Test::In {
                    negated: true,
                    items: self.list()?,
                }
            }
            Tok::Tilde => {
                self.bump();
                Test::Regex(self.regex()?)
            }
            _ => {
                return Err(self.unexpected(
                    "a comparison ('==', '!=', '<', '<=', '>', '>='), 'in', 'not in' or '~'",
                ))
            }
        };
        Ok(Expr::Pred(Predicate { attr, test }))
    }

    /// An attribute name (a word that is not a reserved keyword).
    fn name(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Tok::Word(w) if !RESERVED.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                if w.len() > ATTR_NAME_BYTES_MAX {
                    let kind = FilterErrorKind::NameTooLong {
                        len: w.len(),
                        max: ATTR_NAME_BYTES_MAX,
                    };
                    return Err(FilterError::new(self.offset(), kind));
                }
                let name = (*w).to_owned();
                self.bump();
                Ok(name)
            }
            _ => Err(self.unexpected("an attribute name")),
        }
    }

    fn literal(&mut self) -> Result<Value, FilterError> {
        let v = match self.peek() {
            Tok::Str(s) => Value::Str(s.clone()),
            Tok::Int(i) => Value::Int(*i),
            Tok::Float(f) => Value::Float(*f),
            t if keyword(t, "true") => Value::Bool(true),
            t if keyword(t, "false") => Value::Bool(false),
            _ => return Err(self.unexpected("a literal (a string, a number, true or false)")),
        };
        self.bump();
        Ok(v)
    }

    fn string(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected("a string literal")),
        }
    }

    fn list(&mut self) -> Result<Vec<Value>, FilterError> {
        self.expect(&Tok::LBracket, "'[' to start the list")?;
        let mut items = vec![];
        loop {
            if items.len() >= FILTER_IN_ITEMS_MAX {
                let kind = FilterErrorKind::TooManyItems {
                    max: FILTER_IN_ITEMS_MAX,
                };
                return Err(FilterError::new(self.offset(), kind));
            }
            items.push(self.literal()?);
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {
                    self.bump();
                    return Ok(items);
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    fn regex(&mut self) -> Result<RegexLit, FilterError> {
        let at = self.offset();
        let pattern = self.string()?;
        let built = regex::RegexBuilder::new(&pattern)
            .size_limit(REGEX_COMPILED_BYTES_MAX)
            .dfa_size_limit(REGEX_DFA_BYTES_MAX)
            .build();
        match built {
            Ok(r) => Ok(RegexLit::new(r)),
            Err(regex::Error::CompiledTooBig(_)) => Err(FilterError::new(
                at,
                FilterErrorKind::RegexTooBig {
                    max: REGEX_COMPILED_BYTES_MAX,
                },
            )),
            Err(e) => {
                let message = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_owned();
                Err(FilterError::new(at, FilterErrorKind::Regex { message }))
            }
        }
    }
}

type FunctionParser = fn(&mut Parser<'_>) -> Result<Predicate, FilterError>;

/// The function-call predicates: `exists(a)`, `prefix(a, "s")`, `suffix(a, "s")`.
const FUNCTIONS: [(&str, FunctionParser); 3] = [
    ("exists", |p| {
        p.expect(&Tok::LParen, "'('")?;
        let attr = p.name()?;
        p.expect(&Tok::RParen, "')'")?;
        Ok(Predicate {
            attr,
            test: Test::Exists,
        })
    }),
    ("prefix", |p| {
        let (attr, s) = name_and_string(p)?;
        Ok(Predicate {
            attr,
            test: Test::Prefix(s),
        })
    }),
    ("suffix", |p| {
        let (attr, s) = name_and_string(p)?;
        Ok(Predicate {
            attr,
            test: Test::Suffix(s),
        })
    }),
];

fn name_and_string(p: &mut Parser<'_>) -> Result<(String, String), FilterError> {
    p.expect(&Tok::LParen, "'('")?;
    let attr = p.name()?;
    p.expect(&Tok::Comma, "','")?;
    let s = p.string()?;
    p.expect(&Tok::RParen, "')'")?;
    Ok((attr, s))
}
