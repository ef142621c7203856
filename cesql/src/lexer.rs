//! Tokenizer for CESQL expressions.

use super::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A run of decimal digits (sign handled by the parser).
    Integer(String),
    /// A string literal, escapes already resolved.
    String(String),
    /// A word: keyword, identifier or function name, original case.
    Word(String),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// As the expression writes it, for messages (`unexpected token )`, not `RParen`).
impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let symbol = match self {
            Token::Integer(digits) => return write!(f, "{digits}"),
            Token::String(text) => return write!(f, "'{}'", text.replace('\'', "\\'")),
            Token::Word(word) => return write!(f, "{word}"),
            Token::LParen => "(",
            Token::RParen => ")",
            Token::Comma => ",",
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Star => "*",
            Token::Slash => "/",
            Token::Percent => "%",
            Token::Eq => "=",
            Token::NotEq => "!=",
            Token::Lt => "<",
            Token::Le => "<=",
            Token::Gt => ">",
            Token::Ge => ">=",
        };
        f.write_str(symbol)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Spanned {
    pub token: Token,
    /// Character offset of the token's start in the expression.
    pub pos: usize,
}

pub(crate) fn tokenize(input: &str) -> Result<Vec<Spanned>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let simple = match c {
            '(' => Some(Token::LParen),
            ')' => Some(Token::RParen),
            ',' => Some(Token::Comma),
            '+' => Some(Token::Plus),
            '-' => Some(Token::Minus),
            '*' => Some(Token::Star),
            '/' => Some(Token::Slash),
            '%' => Some(Token::Percent),
            '=' => Some(Token::Eq),
            _ => None,
        };
        if let Some(token) = simple {
            tokens.push(Spanned { token, pos });
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        match c {
            '!' => {
                if next == Some('=') {
                    tokens.push(Spanned { token: Token::NotEq, pos });
                    i += 2;
                } else {
                    return Err(ParseError::new(pos, "expected '=' after '!'"));
                }
            }
            '<' => match next {
                Some('=') => {
                    tokens.push(Spanned { token: Token::Le, pos });
                    i += 2;
                }
                Some('>') => {
                    tokens.push(Spanned { token: Token::NotEq, pos });
                    i += 2;
                }
                _ => {
                    tokens.push(Spanned { token: Token::Lt, pos });
                    i += 1;
                }
            },
            '>' => {
                if next == Some('=') {
                    tokens.push(Spanned { token: Token::Ge, pos });
                    i += 2;
                } else {
                    tokens.push(Spanned { token: Token::Gt, pos });
                    i += 1;
                }
            }
            '\'' | '"' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let ch = chars[i];
                    if ch == '\\' && chars.get(i + 1) == Some(&quote) {
                        value.push(quote);
                        i += 2;
                    } else if ch == quote {
                        i += 1;
                        closed = true;
                        break;
                    } else {
                        value.push(ch);
                        i += 1;
                    }
                }
                if !closed {
                    return Err(ParseError::new(pos, "unterminated string literal"));
                }
                tokens.push(Spanned { token: Token::String(value), pos });
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word.chars().all(|ch| ch.is_ascii_digit()) {
                    tokens.push(Spanned { token: Token::Integer(word), pos });
                } else {
                    tokens.push(Spanned { token: Token::Word(word), pos });
                }
            }
            other => return Err(ParseError::new(pos, format!("unexpected character {other:?}"))),
        }
    }
    Ok(tokens)
}
