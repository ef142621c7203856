//! Reads an applied object into its typed form the way Knative's webhook
//! decodes it (`DisallowUnknownFields`), with errors that name the field:
//!
//! - a field the type does not have: `spec.delivery.retires: unknown field
//!   (known fields: backoffDelay, backoffPolicy, ...)`;
//! - a value of the wrong type: `spec.filters: expected a list, got a mapping`.
//!
//! It is a serde `Deserializer` over the JSON value that keeps the path it is
//! at. The fields a type has come from serde itself: the derived
//! `Deserialize` of a struct calls `deserialize_struct` with its field names,
//! so the model types are the only allow-list. Maps (`labels`, `annotations`,
//! filter `attributes`, `exact`/`prefix`/`suffix`) are read with
//! `deserialize_map`: their keys are data, not fields. A field whose value is
//! `null` counts as absent, as in Kubernetes (`creationTimestamp: null`).
//!
//! Every unknown field is reported (reading goes on without it); a type
//! error ends the reading, as it does in serde.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::FieldError;

/// Reads `value` into `T`. Answers the typed value unless a type error ended
/// the reading, and every error found (unknown fields, then the type error).
pub(crate) fn read<T: DeserializeOwned>(value: &Value) -> (Option<T>, Vec<FieldError>) {
    let unknown = RefCell::new(Vec::new());
    let result = T::deserialize(Strict { value, path: String::new(), unknown: &unknown });
    let mut errors = unknown.into_inner();
    match result {
        Ok(typed) => (Some(typed), errors),
        Err(e) => {
            errors.push(FieldError { path: e.path.unwrap_or_default(), message: e.message });
            (None, errors)
        }
    }
}

/// What the value at a path is, in plain words: `a mapping`, `a string "3"`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean {b}"),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("an integer {n}"),
        Value::Number(n) => format!("a number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("a string {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("a string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn unknown_field(fields: &[&str]) -> String {
    let mut known = fields.to_vec();
    known.sort_by_key(|f| f.to_ascii_lowercase());
    format!("unknown field (known fields: {})", known.join(", "))
}

#[derive(Debug)]
struct Error {
    /// None until the error passes the deserializer of the value it is about.
    path: Option<String>,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error { path: None, message: message.to_string() }
    }
}

impl Error {
    fn at(mut self, path: &str) -> Self {
        self.path.get_or_insert_with(|| path.to_string());
        self
    }
}

struct Strict<'a> {
    value: &'a Value,
    path: String,
    unknown: &'a RefCell<Vec<FieldError>>,
}

impl<'a> Strict<'a> {
    fn child(&self, value: &'a Value, path: String) -> Strict<'a> {
        Strict { value, path, unknown: self.unknown }
    }

    fn mismatch(&self, expected: &str) -> Error {
        Error { path: Some(self.path.clone()), message: format!("expected {expected}, got {}", describe(self.value)) }
    }

    fn signed<'de, V: Visitor<'de>>(self, min: i64, max: i64, visitor: V) -> Result<V::Value, Error> {
        match self.value.as_i64() {
            Some(n) if (min..=max).contains(&n) => visitor.visit_i64(n).map_err(|e: Error| e.at(&self.path)),
            _ if self.value.is_i64() || self.value.is_u64() => {
                Err(self.mismatch(&format!("an integer from {min} to {max}")))
            }
            _ => Err(self.mismatch("an integer")),
        }
    }

    fn unsigned<'de, V: Visitor<'de>>(self, max: u64, visitor: V) -> Result<V::Value, Error> {
        match self.value.as_u64() {
            Some(n) if n <= max => visitor.visit_u64(n).map_err(|e: Error| e.at(&self.path)),
            _ if self.value.is_i64() || self.value.is_u64() => {
                Err(self.mismatch(&format!("an integer from 0 to {max}")))
            }
            _ => Err(self.mismatch("an integer")),
        }
    }

    fn entries<'de, V: Visitor<'de>>(
        self,
        entries: Vec<(&'a String, &'a Value)>,
        keys_are_fields: bool,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let map = Entries { parent: self, entries: entries.into_iter(), value: None, keys_are_fields };
        visitor.visit_map(map).map_err(|e: Error| e.at(&path))
    }
}

macro_rules! signed {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.signed(<$ty>::MIN.into(), <$ty>::MAX.into(), visitor)
        }
    )*};
}

macro_rules! unsigned {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.unsigned(<$ty>::MAX.into(), visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Strict<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => visitor.visit_u64(u),
                (None, Some(i), _) => visitor.visit_i64(i),
                (None, None, f) => visitor.visit_f64(f.unwrap_or(f64::NAN)),
            },
            Value::String(s) => visitor.visit_str(s),
            Value::Array(_) => return self.deserialize_seq(visitor),
            Value::Object(map) => return self.entries(map.iter().collect(), false, visitor),
        }
        .map_err(|e: Error| e.at(&path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Bool(b) => visitor.visit_bool(*b).map_err(|e: Error| e.at(&self.path)),
            _ => Err(self.mismatch("a boolean")),
        }
    }

    signed!(deserialize_i8: i8, deserialize_i16: i16, deserialize_i32: i32, deserialize_i64: i64);
    unsigned!(deserialize_u8: u8, deserialize_u16: u16, deserialize_u32: u32, deserialize_u64: u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value.as_f64() {
            Some(f) => visitor.visit_f64(f).map_err(|e: Error| e.at(&self.path)),
            None => Err(self.mismatch("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) => visitor.visit_str(s).map_err(|e: Error| e.at(&self.path)),
            _ => Err(self.mismatch("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none().map_err(|e: Error| e.at(&self.path)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit().map_err(|e: Error| e.at(&self.path)),
            _ => Err(self.mismatch("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Array(items) => {
                let path = self.path.clone();
                let seq = Items { parent: self, items: items.iter().enumerate() };
                visitor.visit_seq(seq).map_err(|e: Error| e.at(&path))
            }
            _ => Err(self.mismatch("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    /// A map: its keys are data (`labels`, `exact`), any key is fine.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => self.entries(map.iter().collect(), false, visitor),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    /// A struct: its keys are fields, and only `fields` are known.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Value::Object(map) = self.value else { return Err(self.mismatch("a mapping")) };
        let mut known = Vec::with_capacity(map.len());
        for (key, value) in map {
            if fields.contains(&key.as_str()) {
                if !value.is_null() {
                    known.push((key, value));
                }
            } else {
                let path = field_path(&self.path, key);
                self.unknown.borrow_mut().push(FieldError { path, message: unknown_field(fields) });
            }
        }
        self.entries(known, true, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // The model has no enums; should one appear, serde_json reads it.
        de::Deserializer::deserialize_enum(self.value.clone(), name, variants, visitor)
            .map_err(|e| Error { path: Some(self.path.clone()), message: e.to_string() })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

fn field_path(parent: &str, field: &str) -> String {
    if parent.is_empty() { field.to_string() } else { format!("{parent}.{field}") }
}

struct Items<'a> {
    parent: Strict<'a>,
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            None => Ok(None),
            Some((index, item)) => {
                let path = format!("{}[{index}]", self.parent.path);
                seed.deserialize(self.parent.child(item, path)).map(Some)
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'a> {
    parent: Strict<'a>,
    entries: std::vec::IntoIter<(&'a String, &'a Value)>,
    /// The entry whose key was just read.
    value: Option<(&'a String, &'a Value)>,
    /// A struct's fields (`a.b`) or a map's keys (`a[b]`).
    keys_are_fields: bool,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            None => Ok(None),
            Some(entry) => {
                self.value = Some(entry);
                seed.deserialize(de::value::StrDeserializer::<Error>::new(entry.0)).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a map value was read before its key"));
        };
        let path = if self.keys_are_fields {
            field_path(&self.parent.path, key)
        } else {
            format!("{}[{key}]", self.parent.path)
        };
        seed.deserialize(self.parent.child(value, path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
