//! A strict reader over parsed JSON: every field is taken by name with its exact type, and
//! whatever is left over is refused naming it. Why: a field keyguard ignores is a field a
//! validator client (or whoever feeds it) could believe was checked.

use serde_json::{Map, Value};

use crate::DecodeError;

/// The longest decimal `uint64` (20 digits).
const MAX_U64_DIGITS: usize = 20;

/// One JSON object being read; call [`Obj::finish`] to refuse unread fields.
pub(crate) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl<'a> Obj<'a> {
    pub(crate) fn new(v: &'a Value, path: &str) -> Result<Obj<'a>, DecodeError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
                used: Vec::new(),
            }),
            _ => Err(DecodeError::invalid(
                if path.is_empty() { "body" } else { path },
                "expected a JSON object",
            )),
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// The raw value of an optional field (JSON `null` counts as absent).
    pub(crate) fn opt_value(&mut self, name: &'static str) -> Option<&'a Value> {
        self.used.push(name);
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn value(&mut self, name: &'static str) -> Result<&'a Value, DecodeError> {
        self.opt_value(name)
            .ok_or_else(|| DecodeError::invalid(&self.path(name), "missing"))
    }

    pub(crate) fn obj(&mut self, name: &'static str) -> Result<Obj<'a>, DecodeError> {
        let v = self.value(name)?;
        Obj::new(v, &self.path(name))
    }

    pub(crate) fn opt_obj(&mut self, name: &'static str) -> Result<Option<Obj<'a>>, DecodeError> {
        match self.opt_value(name) {
            None => Ok(None),
            Some(v) => Obj::new(v, &self.path(name)).map(Some),
        }
    }

    pub(crate) fn str(&mut self, name: &'static str) -> Result<&'a str, DecodeError> {
        let p = self.path(name);
        match self.value(name)? {
            Value::String(s) => Ok(s),
            _ => Err(DecodeError::invalid(&p, "expected a string")),
        }
    }

    /// A `uint64` as the beacon API writes it: a decimal string, no sign, no leading zeros.
    pub(crate) fn u64(&mut self, name: &'static str) -> Result<u64, DecodeError> {
        let p = self.path(name);
        let s = self.str(name)?;
        parse_u64(s).ok_or_else(|| DecodeError::invalid(&p, "expected a decimal uint64 string"))
    }

    pub(crate) fn opt_u64(&mut self, name: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.map.get(name).is_none_or(Value::is_null) {
            self.used.push(name);
            return Ok(None);
        }
        self.u64(name).map(Some)
    }

    /// Exactly `N` bytes as `0x` + `2N` hex digits.
    pub(crate) fn bytes<const N: usize>(
        &mut self,
        name: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let p = self.path(name);
        let s = self.str(name)?;
        parse_hex_fixed::<N>(s)
            .ok_or_else(|| DecodeError::invalid(&p, &format!("expected 0x + {} hex digits", 2 * N)))
    }

    /// Variable bytes as `0x` + hex, at most `max` bytes.
    pub(crate) fn var_bytes(
        &mut self,
        name: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let p = self.path(name);
        let s = self.str(name)?;
        let h = s
            .strip_prefix("0x")
            .ok_or_else(|| DecodeError::invalid(&p, "expected 0x-prefixed hex"))?;
        if h.len() > 2 * max {
            return Err(DecodeError::invalid(
                &p,
                &format!("longer than {max} bytes"),
            ));
        }
        hex::decode(h).map_err(|_| DecodeError::invalid(&p, "expected 0x-prefixed hex"))
    }

    /// Refuses any field not read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.map.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(k) => Err(DecodeError::invalid(&join(&self.path, k), "unknown field")),
            None => Ok(()),
        }
    }
}

/// Parses a canonical decimal `uint64`.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_U64_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Parses `0x` + exactly `2N` hex digits.
pub fn parse_hex_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    let h = s.strip_prefix("0x")?;
    if h.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

/// Rejects duplicate object keys anywhere in `body` before it is parsed into a map (serde_json
/// keeps the last of two equal keys; a proxy or log that kept the first would disagree with
/// what keyguard signed).
pub(crate) fn parse_no_duplicates(body: &[u8]) -> Result<Value, DecodeError> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Strict(Value);
    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(V).map(Strict)
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Strict(v)) = a.next_element()? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = a.next_key::<String>()? {
                let Strict(v) = a.next_value()?;
                if m.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate field {k:?}")));
                }
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = <Strict as serde::Deserialize>::deserialize(&mut de)
        .and_then(|s| de.end().map(|_| s))
        .map_err(|e| DecodeError::invalid("body", &format!("not valid JSON: {e}")))?;
    Ok(v.0)
}
