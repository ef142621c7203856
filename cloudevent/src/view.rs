//! An event as CESQL and the Subscriptions API filters see it.

use sluice_cesql::{EventAttributes, Value};

use crate::model::{AttrValue, CloudEvent};

/// A CloudEvent seen through CESQL's attribute interface: integers beyond CESQL's 32 bits are strings.
pub struct EventView<'a>(pub &'a CloudEvent);

impl EventAttributes for EventView<'_> {
    fn attribute(&self, name: &str) -> Option<Value> {
        Some(match self.0.attributes.get(name)? {
            AttrValue::String(s) => Value::String(s.clone()),
            AttrValue::Boolean(b) => Value::Boolean(*b),
            AttrValue::Integer(i) => match i32::try_from(*i) {
                Ok(i) => Value::Integer(i),
                Err(_) => Value::String(i.to_string()),
            },
        })
    }
}
