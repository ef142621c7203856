//! Recursive-descent parser producing the expression tree.
//!
//! Precedence, loosest first (spec §3.6): `AND`/`OR`/`XOR` (one level, left to right), comparisons, `+ -`,
//! `* / %`, postfix `[NOT] LIKE` / `[NOT] IN`, unary `NOT` / `-`, then primaries (`EXISTS`, function
//! invocations, sub-expressions, attributes and literals).

use super::ParseError;
use super::Value;
use super::lexer::{Spanned, Token, tokenize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    And,
    Or,
    Xor,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    Abs,
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
}

impl Function {
    /// Resolves a (case-insensitive) name and an arity to a built-in function.
    fn resolve(name: &str, arity: usize) -> Option<Function> {
        let f = match name.to_ascii_uppercase().as_str() {
            "ABS" if arity == 1 => Function::Abs,
            "LENGTH" if arity == 1 => Function::Length,
            "CONCAT" => Function::Concat,
            "CONCAT_WS" if arity >= 1 => Function::ConcatWs,
            "LOWER" if arity == 1 => Function::Lower,
            "UPPER" if arity == 1 => Function::Upper,
            "TRIM" if arity == 1 => Function::Trim,
            "LEFT" if arity == 2 => Function::Left,
            "RIGHT" if arity == 2 => Function::Right,
            "SUBSTRING" if arity == 2 || arity == 3 => Function::Substring,
            "INT" if arity == 1 => Function::Int,
            "BOOL" if arity == 1 => Function::Bool,
            "STRING" if arity == 1 => Function::String,
            "IS_BOOL" if arity == 1 => Function::IsBool,
            "IS_INT" if arity == 1 => Function::IsInt,
            _ => return None,
        };
        Some(f)
    }
}

/// One element of a compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternItem {
    Char(char),
    /// `_`: exactly one character.
    One,
    /// `%`: any run of characters, possibly empty.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Literal(Value),
    Attribute(String),
    Exists(String),
    Not(Box<Node>),
    Negate(Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Like {
        operand: Box<Node>,
        pattern: Vec<PatternItem>,
        negated: bool,
    },
    In {
        operand: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call {
        function: Function,
        args: Vec<Node>,
    },
    /// A call that cannot be dispatched (unknown name or arity): a MissingFunctionError at evaluation time.
    MissingFunction {
        name: String,
        arity: usize,
    },
}

/// Appends to `missing` each call under `node` that no function answers, as `NAME/ARITY`, in the order written.
pub(crate) fn missing_functions(node: &Node, missing: &mut Vec<String>) {
    match node {
        Node::Literal(_) | Node::Attribute(_) | Node::Exists(_) => {}
        Node::Not(inner) | Node::Negate(inner) => missing_functions(inner, missing),
        Node::Binary(_, left, right) => {
            missing_functions(left, missing);
            missing_functions(right, missing);
        }
        Node::Like { operand, .. } => missing_functions(operand, missing),
        Node::In { operand, set, .. } => {
            missing_functions(operand, missing);
            set.iter().for_each(|item| missing_functions(item, missing));
        }
        Node::Call { args, .. } => args.iter().for_each(|arg| missing_functions(arg, missing)),
        Node::MissingFunction { name, arity } => missing.push(format!("{name}/{arity}")),
    }
}

/// Longest expression accepted, in characters (every input has a bound; Knative's webhook has none, and a
/// Trigger's `type IN (...)` of a few hundred event types is common: 4,096 refused them until session 63).
pub(crate) const MAX_EXPRESSION_CHARS: usize = 65_536;
/// Most tokens: bounds the tree's size.
pub(crate) const MAX_TOKENS: usize = 16_384;
/// Most operators (arithmetic, comparison, AND, OR, XOR, LIKE, IN): bounds the tree's depth (a chain `1+1+...`
/// nests one node per operator), which evaluation and drop walk recursively on a thread's stack. A flat IN set
/// of any length adds one. Until session 63 the token count bounded it (512), refusing long IN sets.
pub(crate) const MAX_OPERATORS: usize = 256;
/// Deepest nesting of parentheses, function calls, NOT and unary minus.
pub(crate) const MAX_NESTING: usize = 64;

pub(crate) fn parse(input: &str) -> Result<Node, ParseError> {
    let chars = input.chars().count();
    if chars > MAX_EXPRESSION_CHARS {
        return Err(ParseError::new(MAX_EXPRESSION_CHARS, format!("longer than {MAX_EXPRESSION_CHARS} characters")));
    }
    let tokens = tokenize(input)?;
    if let Some(extra) = tokens.get(MAX_TOKENS) {
        return Err(ParseError::new(extra.pos, format!("more than {MAX_TOKENS} tokens")));
    }
    if let Some(extra) = tokens.iter().filter(|t| is_operator(&t.token)).nth(MAX_OPERATORS) {
        return Err(ParseError::new(extra.pos, format!("more than {MAX_OPERATORS} operators")));
    }
    let mut parser = Parser { tokens, index: 0, end: chars, nesting: 0 };
    let node = parser.logic()?;
    if let Some(t) = parser.peek_spanned() {
        return Err(ParseError::new(t.pos, format!("unexpected token {}", t.token)));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<Spanned>,
    index: usize,
    end: usize,
    /// How deep the recursive descent is in parentheses, calls, NOT and unary minus.
    nesting: usize,
}

fn is_keyword(word: &str, keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword)
}

impl Parser {
    fn peek_spanned(&self) -> Option<&Spanned> {
        self.tokens.get(self.index)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.index).map(|s| &s.token)
    }

    fn peek_at(&self, offset: usize) -> Option<&Token> {
        self.tokens.get(self.index + offset).map(|s| &s.token)
    }

    fn pos(&self) -> usize {
        self.peek_spanned().map_or(self.end, |s| s.pos)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if is_keyword(w, keyword))
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.index).map(|s| s.token.clone());
        if t.is_some() {
            self.index += 1;
        }
        t
    }

    fn expect(&mut self, expected: &Token, what: &str) -> Result<(), ParseError> {
        let pos = self.pos();
        match self.next() {
            Some(ref t) if t == expected => Ok(()),
            Some(t) => Err(ParseError::new(pos, format!("expected {what}, found {t:?}"))),
            None => Err(ParseError::new(pos, format!("expected {what}, found end of expression"))),
        }
    }

    fn logic(&mut self) -> Result<Node, ParseError> {
        let mut left = self.comparison()?;
        loop {
            let op = if self.peek_keyword("AND") {
                BinaryOp::And
            } else if self.peek_keyword("OR") {
                BinaryOp::Or
            } else if self.peek_keyword("XOR") {
                BinaryOp::Xor
            } else {
                return Ok(left);
            };
            self.index += 1;
            let right = self.comparison()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn comparison(&mut self) -> Result<Node, ParseError> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Token::Eq) => BinaryOp::Eq,
                Some(Token::NotEq) => BinaryOp::NotEq,
                Some(Token::Lt) => BinaryOp::Lt,
                Some(Token::Le) => BinaryOp::Le,
                Some(Token::Gt) => BinaryOp::Gt,
                Some(Token::Ge) => BinaryOp::Ge,
                _ => return Ok(left),
            };
            self.index += 1;
            let right = self.additive()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn additive(&mut self) -> Result<Node, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Token::Plus) => BinaryOp::Add,
                Some(Token::Minus) => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.index += 1;
            let right = self.multiplicative()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Node, ParseError> {
        let mut left = self.postfix()?;
        loop {
            let op = match self.peek() {
                Some(Token::Star) => BinaryOp::Mul,
                Some(Token::Slash) => BinaryOp::Div,
                Some(Token::Percent) => BinaryOp::Mod,
                _ => return Ok(left),
            };
            self.index += 1;
            let right = self.postfix()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn postfix(&mut self) -> Result<Node, ParseError> {
        let mut operand = self.unary()?;
        loop {
            let negated = if self.peek_keyword("NOT") {
                match self.peek_at(1) {
                    Some(Token::Word(w)) if is_keyword(w, "LIKE") || is_keyword(w, "IN") => {
                        self.index += 1;
                        true
                    }
                    _ => return Ok(operand),
                }
            } else {
                false
            };
            if self.peek_keyword("LIKE") {
                self.index += 1;
                let pos = self.pos();
                let pattern = match self.next() {
                    Some(Token::String(s)) => compile_pattern(&s),
                    _ => return Err(ParseError::new(pos, "LIKE expects a string literal pattern")),
                };
                operand = Node::Like { operand: Box::new(operand), pattern, negated };
            } else if self.peek_keyword("IN") {
                self.index += 1;
                self.expect(&Token::LParen, "'(' opening the IN set")?;
                // A level of nesting like parentheses (regression: `1 IN (1 IN (1 IN (...)))` recursed past
                // MAX_NESTING, bounded only by the tokens).
                let set = self.nested(|parser| {
                    let mut set = vec![parser.logic()?];
                    while parser.peek() == Some(&Token::Comma) {
                        parser.index += 1;
                        set.push(parser.logic()?);
                    }
                    Ok(set)
                })?;
                self.expect(&Token::RParen, "')' closing the IN set")?;
                operand = Node::In { operand: Box::new(operand), set, negated };
            } else {
                return Ok(operand);
            }
        }
    }

    /// Enters one level of nesting, refusing past [`MAX_NESTING`] (the recursion would otherwise follow hostile
    /// input as deep as it goes).
    fn nested<T>(&mut self, parse: impl FnOnce(&mut Self) -> Result<T, ParseError>) -> Result<T, ParseError> {
        if self.nesting >= MAX_NESTING {
            return Err(ParseError::new(self.pos(), format!("nested deeper than {MAX_NESTING}")));
        }
        self.nesting += 1;
        let result = parse(self);
        self.nesting -= 1;
        result
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        self.nested(Self::unary_unnested)
    }

    fn unary_unnested(&mut self) -> Result<Node, ParseError> {
        if self.peek_keyword("NOT") {
            self.index += 1;
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        match self.peek() {
            Some(Token::Minus) => {
                self.index += 1;
                if let Some(Token::Integer(digits)) = self.peek() {
                    let pos = self.pos();
                    let value = integer_literal(&format!("-{digits}"), pos)?;
                    self.index += 1;
                    return Ok(Node::Literal(value));
                }
                Ok(Node::Negate(Box::new(self.unary()?)))
            }
            Some(Token::Plus) => {
                self.index += 1;
                let pos = self.pos();
                match self.next() {
                    Some(Token::Integer(digits)) => Ok(Node::Literal(integer_literal(&digits, pos)?)),
                    _ => Err(ParseError::new(pos, "expected an integer after '+'")),
                }
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let pos = self.pos();
        let Some(token) = self.next() else {
            return Err(ParseError::new(pos, "unexpected end of expression"));
        };
        match token {
            Token::Integer(digits) => integer_literal(&digits, pos).map(Node::Literal),
            Token::String(s) => Ok(Node::Literal(Value::String(s))),
            Token::LParen => {
                let inner = self.nested(Self::logic)?;
                self.expect(&Token::RParen, "')'")?;
                Ok(inner)
            }
            Token::Word(word) => {
                if is_keyword(&word, "TRUE") {
                    return Ok(Node::Literal(Value::Boolean(true)));
                }
                if is_keyword(&word, "FALSE") {
                    return Ok(Node::Literal(Value::Boolean(false)));
                }
                if is_keyword(&word, "EXISTS") {
                    let pos = self.pos();
                    return match self.next() {
                        Some(Token::Word(name)) if is_identifier(&name) && !is_reserved(&name) => {
                            Ok(Node::Exists(name.to_ascii_lowercase()))
                        }
                        _ => Err(ParseError::new(pos, "EXISTS expects an attribute name")),
                    };
                }
                if is_reserved(&word) {
                    return Err(ParseError::new(pos, format!("unexpected keyword {word}")));
                }
                if self.peek() == Some(&Token::LParen) {
                    if !is_function_name(&word) {
                        return Err(ParseError::new(pos, format!("invalid function name {word:?}")));
                    }
                    self.index += 1;
                    let mut args = Vec::new();
                    if self.peek() == Some(&Token::RParen) {
                        self.index += 1;
                    } else {
                        args.push(self.logic()?);
                        while self.peek() == Some(&Token::Comma) {
                            self.index += 1;
                            args.push(self.logic()?);
                        }
                        self.expect(&Token::RParen, "')' closing the argument list")?;
                    }
                    return Ok(match Function::resolve(&word, args.len()) {
                        Some(function) => Node::Call { function, args },
                        None => Node::MissingFunction { name: word, arity: args.len() },
                    });
                }
                if !is_identifier(&word) {
                    return Err(ParseError::new(pos, format!("invalid attribute name {word:?}")));
                }
                Ok(Node::Attribute(word.to_ascii_lowercase()))
            }
            other => Err(ParseError::new(pos, format!("unexpected token {other}"))),
        }
    }
}

fn integer_literal(text: &str, pos: usize) -> Result<Value, ParseError> {
    text.parse::<i32>()
        .map(Value::Integer)
        .map_err(|_| ParseError::new(pos, format!("integer literal {text} is not a valid 32 bit signed integer")))
}

fn is_reserved(word: &str) -> bool {
    ["AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"].iter().any(|k| is_keyword(word, k))
}

/// `value-identifier ::= ( lowercase-char | digit )+`; keywords being case-insensitive, so are identifiers.
fn is_identifier(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `function-identifier ::= char ( "_" | char )*`.
fn is_function_name(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Whether a token is an operator that makes a node of two operands (a unary minus counts too: it nests as
/// deep).
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Plus
        | Token::Minus
        | Token::Star
        | Token::Slash
        | Token::Percent
        | Token::Eq
        | Token::NotEq
        | Token::Lt
        | Token::Le
        | Token::Gt
        | Token::Ge => true,
        Token::Word(word) => ["AND", "OR", "XOR", "LIKE", "IN"].iter().any(|k| word.eq_ignore_ascii_case(k)),
        Token::Integer(_) | Token::String(_) | Token::LParen | Token::RParen | Token::Comma => false,
    }
}

/// Compiles a `LIKE` pattern: `%` and `_` are wildcards; `\%`, `\_` and `\\` escape them; any other backslash is
/// a literal character.
fn compile_pattern(pattern: &str) -> Vec<PatternItem> {
    let mut items = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ ('%' | '_' | '\\')) => {
                    chars.next();
                    items.push(PatternItem::Char(n));
                }
                _ => items.push(PatternItem::Char('\\')),
            },
            '%' => items.push(PatternItem::Any),
            '_' => items.push(PatternItem::One),
            other => items.push(PatternItem::Char(other)),
        }
    }
    items
}
