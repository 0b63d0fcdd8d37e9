//! Caps on EIP-712 typed data, checked on the raw JSON before any library builds a type graph
//! or a value from it, and the bounded hash that follows.
//!
//! The attack stopped: a 66 KB request with 1,500 struct types chained through arrays
//! (`T0[]` -> `T1[]` -> ...) made the recursive type resolver overflow a worker's stack and
//! abort the daemon; diamond-shaped type graphs (`T0` has two `T1` fields, `T1` two `T2`, ...)
//! expand exponentially when resolved; and the type hash was rebuilt for every struct value,
//! so a long array of structs cost `elements x types^2`. Every check here is iterative, and
//! every refusal is a `-32602` naming the field and the cap.

use std::collections::HashMap;

use alloy_dyn_abi::eip712::{Resolver, TypedData};
use alloy_dyn_abi::DynSolValue;
use alloy_primitives::{keccak256, B256};
use keyguard_chain::Rejection;
use serde_json::Value;

/// Most struct types in `types` (EIP712Domain included).
pub const MAX_TYPES: usize = 64;
/// Most fields of one struct type.
pub const MAX_FIELDS: usize = 64;
/// Longest type or field name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest chain of struct types referring to each other (`A` has a `B` field: 2).
pub const MAX_STRUCT_DEPTH: usize = 16;
/// Most array dimensions on one field (`T[2][2]` has 2; Seaport bulk orders use up to 24).
pub const MAX_ARRAY_DIMS: usize = 24;
/// Deepest value nesting a type allows: structs plus array dimensions along any path.
pub const MAX_NESTING: usize = 64;
/// Most nodes in the primary type once every struct reference is expanded (diamonds count
/// once per path, as the resolver builds them).
pub const MAX_EXPANDED_TYPE: usize = 4_096;
/// Most elements of one array (and largest fixed array size).
pub const MAX_ARRAY_LEN: usize = 1_024;
/// Most JSON values in `domain` and `message` together.
pub const MAX_VALUES: usize = 16_384;
/// Longest string value, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Most string bytes in `domain` and `message` together.
pub const MAX_TOTAL_STRING_BYTES: usize = 256 * 1024;

fn cap(field: &str, what: String, limit: usize) -> Rejection {
    Rejection::invalid(field, format!("{what}; the cap is {limit}"))
}

/// A field type split into its root name and array dimensions (`None` for `[]`).
struct FieldType<'a> {
    root: &'a str,
    dims: Vec<Option<usize>>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Parses `Name([N]|[])*`; anything else (tuples, spaces, nested brackets) is refused, so the
/// library's recursive type parser only ever sees flat names.
fn parse_field_type<'a>(field: &str, ty: &'a str) -> Result<FieldType<'a>, Rejection> {
    let bad = || Rejection::invalid(field, "not an EIP-712 type name (Name, Name[] or Name[N])");
    let root_end = ty.find('[').unwrap_or(ty.len());
    let root = &ty[..root_end];
    if !is_ident(root) {
        return Err(bad());
    }
    let mut dims = Vec::new();
    let mut rest = &ty[root_end..];
    while !rest.is_empty() {
        let inner_end = rest.find(']').ok_or_else(bad)?;
        let inner = rest.get(1..inner_end).ok_or_else(bad)?;
        if !rest.starts_with('[') {
            return Err(bad());
        }
        if dims.len() == MAX_ARRAY_DIMS {
            return Err(cap(
                field,
                format!("type {ty:.64} has more array dimensions than allowed"),
                MAX_ARRAY_DIMS,
            ));
        }
        dims.push(if inner.is_empty() {
            None
        } else {
            let n: usize = inner
                .parse()
                .ok()
                .filter(|_| inner.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(bad)?;
            if n == 0 || n > MAX_ARRAY_LEN {
                return Err(cap(
                    field,
                    format!("fixed array size {n} is zero or too large"),
                    MAX_ARRAY_LEN,
                ));
            }
            Some(n)
        });
        rest = &rest[inner_end + 1..];
    }
    Ok(FieldType { root, dims })
}

/// One struct type: its fields' struct references (index, dimensions).
struct Node {
    edges: Vec<(usize, usize)>,
}

/// Checks the `types` object: counts, names, and (iteratively) that the struct graph is
/// acyclic, shallow and small once expanded.
pub fn check_types(types: &Value, primary: Option<&str>) -> Result<(), Rejection> {
    let Value::Object(types) = types else {
        return Err(Rejection::invalid("typedData.types", "must be an object"));
    };
    if types.len() > MAX_TYPES {
        return Err(cap(
            "typedData.types",
            format!("{} struct types", types.len()),
            MAX_TYPES,
        ));
    }
    let index: HashMap<&str, usize> = types
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut nodes = Vec::with_capacity(types.len());
    for (name, fields) in types {
        let at = format!("typedData.types.{:.64}", name);
        if name.len() > MAX_NAME_BYTES || !is_ident(name) {
            return Err(Rejection::invalid(
                "typedData.types",
                format!(
                    "type name {name:.64?} is not an identifier of at most {MAX_NAME_BYTES} bytes"
                ),
            ));
        }
        let Value::Array(fields) = fields else {
            return Err(Rejection::invalid(at, "must be an array of {name, type}"));
        };
        if fields.len() > MAX_FIELDS {
            return Err(cap(&at, format!("{} fields", fields.len()), MAX_FIELDS));
        }
        let mut edges = Vec::new();
        for f in fields {
            let (Some(Value::String(fname)), Some(Value::String(ty))) =
                (f.get("name"), f.get("type"))
            else {
                return Err(Rejection::invalid(
                    at,
                    "each field must be {name, type} strings",
                ));
            };
            if fname.len() > MAX_NAME_BYTES || ty.len() > MAX_NAME_BYTES * 2 {
                return Err(cap(
                    &at,
                    "a field name or type is too long".to_owned(),
                    MAX_NAME_BYTES,
                ));
            }
            let parsed = parse_field_type(&at, ty)?;
            if let Some(&target) = index.get(parsed.root) {
                edges.push((target, parsed.dims.len()));
            }
        }
        nodes.push(Node { edges });
    }
    if let Some(p) = primary {
        if !index.contains_key(p) && p != "EIP712Domain" {
            return Err(Rejection::invalid(
                "typedData.primaryType",
                format!("{p:.64?} is not a type of typedData.types"),
            ));
        }
    }
    graph_bounds(types.keys().map(String::as_str).collect(), &nodes)
}

/// Post-order over the struct graph with an explicit stack: rejects cycles (EIP-712 values of a
/// recursive type still nest, and the resolver refuses them) and computes per type its struct
/// depth, value nesting and expanded size, each capped.
fn graph_bounds(names: Vec<&str>, nodes: &[Node]) -> Result<(), Rejection> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; nodes.len()];
    // (struct depth, nesting, expanded size) per finished node.
    let mut done = vec![(0usize, 0usize, 0usize); nodes.len()];
    for start in 0..nodes.len() {
        if color[start] != WHITE {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        color[start] = GREY;
        while let Some(&mut (n, ref mut next)) = stack.last_mut() {
            if let Some(&(child, _)) = nodes[n].edges.get(*next) {
                *next += 1;
                match color[child] {
                    GREY => {
                        return Err(Rejection::invalid(
                            "typedData.types",
                            format!(
                                "type {:.64} refers back to {:.64} (recursive types are refused)",
                                names[n], names[child]
                            ),
                        ))
                    }
                    WHITE => {
                        color[child] = GREY;
                        stack.push((child, 0));
                    }
                    _ => {}
                }
                continue;
            }
            let (mut depth, mut nesting, mut size) = (1usize, 1usize, 1usize);
            for &(child, dims) in &nodes[n].edges {
                let (d, ne, s) = done[child];
                depth = depth.max(d + 1);
                nesting = nesting.max(ne + dims + 1);
                size = size.saturating_add(s);
            }
            let at = || format!("typedData.types.{:.64}", names[n]);
            if depth > MAX_STRUCT_DEPTH {
                return Err(cap(
                    &at(),
                    format!("struct nesting {depth}"),
                    MAX_STRUCT_DEPTH,
                ));
            }
            if nesting > MAX_NESTING {
                return Err(cap(
                    &at(),
                    format!("value nesting (structs and array dimensions) {nesting}"),
                    MAX_NESTING,
                ));
            }
            if size > MAX_EXPANDED_TYPE {
                return Err(cap(
                    &at(),
                    "the type expands to too many nodes".to_owned(),
                    MAX_EXPANDED_TYPE,
                ));
            }
            done[n] = (depth, nesting, size);
            color[n] = BLACK;
            stack.pop();
        }
    }
    Ok(())
}

/// Counts values, array lengths and string sizes of `domain` and `message` without recursion.
pub fn check_values(domain: Option<&Value>, message: Option<&Value>) -> Result<(), Rejection> {
    let mut stack: Vec<(&'static str, &Value, usize)> = Vec::new();
    stack.extend(domain.map(|d| ("typedData.domain", d, 1)));
    stack.extend(message.map(|m| ("typedData.message", m, 1)));
    let (mut values, mut bytes) = (0usize, 0usize);
    while let Some((field, v, depth)) = stack.pop() {
        values += 1;
        if values > MAX_VALUES {
            return Err(cap(field, "too many values".to_owned(), MAX_VALUES));
        }
        // A value deeper than any allowed type could describe; refused before anything
        // clones or drops it recursively.
        if depth > MAX_NESTING + 1 {
            return Err(cap(
                field,
                "values nested too deep".to_owned(),
                MAX_NESTING + 1,
            ));
        }
        match v {
            Value::Array(items) => {
                if items.len() > MAX_ARRAY_LEN {
                    return Err(cap(
                        field,
                        format!("an array of {} elements", items.len()),
                        MAX_ARRAY_LEN,
                    ));
                }
                stack.extend(items.iter().map(|i| (field, i, depth + 1)));
            }
            Value::Object(o) => stack.extend(o.values().map(|i| (field, i, depth + 1))),
            Value::String(s) => {
                if s.len() > MAX_STRING_BYTES {
                    return Err(cap(
                        field,
                        format!("a string of {} bytes", s.len()),
                        MAX_STRING_BYTES,
                    ));
                }
                bytes += s.len();
                if bytes > MAX_TOTAL_STRING_BYTES {
                    return Err(cap(
                        field,
                        "too many string bytes in total".to_owned(),
                        MAX_TOTAL_STRING_BYTES,
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks every cap on a parsed `typedData` object (before it is deserialized).
pub fn check(data: &Value) -> Result<(), Rejection> {
    let Value::Object(o) = data else {
        return Err(Rejection::invalid("typedData", "must be an object"));
    };
    let types = o
        .get("types")
        .ok_or_else(|| Rejection::invalid("typedData.types", "missing"))?;
    check_types(types, o.get("primaryType").and_then(Value::as_str))?;
    check_values(o.get("domain"), o.get("message"))
}

/// Work done by one [`signing_hash`], for tests that bound it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashWork {
    /// `encodeType` strings built and hashed (at most one per struct type).
    pub type_hashes: usize,
    /// Values hashed into words.
    pub words: usize,
}

struct Hasher<'a> {
    resolver: &'a Resolver,
    type_hashes: HashMap<String, B256>,
    work: HashWork,
}

impl Hasher<'_> {
    fn type_hash(&mut self, name: &str) -> Result<B256, String> {
        if let Some(h) = self.type_hashes.get(name) {
            return Ok(*h);
        }
        let h = self.resolver.type_hash(name).map_err(|e| e.to_string())?;
        self.work.type_hashes += 1;
        self.type_hashes.insert(name.to_owned(), h);
        Ok(h)
    }

    /// EIP-712 `encodeData` word of a value (alloy's `eip712_data_word` with the type hash of
    /// each struct computed once). Recursion depth is the value's nesting, capped above.
    fn word(&mut self, v: &DynSolValue) -> Result<B256, String> {
        self.work.words += 1;
        if let Some(w) = v.as_word() {
            return Ok(w);
        }
        let bytes = match v {
            DynSolValue::CustomStruct { name, tuple, .. } => {
                let mut b = Vec::with_capacity(32 * (tuple.len() + 1));
                b.extend_from_slice(self.type_hash(name)?.as_slice());
                for x in tuple {
                    b.extend_from_slice(self.word(x)?.as_slice());
                }
                b
            }
            DynSolValue::Array(inner) | DynSolValue::FixedArray(inner) => {
                let mut b = Vec::with_capacity(32 * inner.len());
                for x in inner {
                    b.extend_from_slice(self.word(x)?.as_slice());
                }
                b
            }
            DynSolValue::Bytes(b) => return Ok(keccak256(b)),
            DynSolValue::String(s) => return Ok(keccak256(s.as_bytes())),
            other => return Err(format!("{:?} has no EIP-712 encoding", other.as_type())),
        };
        Ok(keccak256(bytes))
    }
}

/// The EIP-712 signing hash, `keccak256(0x1901 || domainSeparator || hashStruct(message))`
/// (only the separator for primary type `EIP712Domain`, as eth-sig-util does). Call after
/// [`check`].
pub fn signing_hash(data: &TypedData) -> Result<(B256, HashWork), String> {
    let mut buf = Vec::with_capacity(66);
    buf.extend_from_slice(&[0x19, 0x01]);
    buf.extend_from_slice(data.domain.separator().as_slice());
    let mut h = Hasher {
        resolver: &data.resolver,
        type_hashes: HashMap::new(),
        work: HashWork::default(),
    };
    if data.primary_type != "EIP712Domain" {
        let value = data.coerce().map_err(|e| e.to_string())?;
        if !matches!(value, DynSolValue::CustomStruct { .. }) {
            return Err("EIP-712 primary type must be a struct".into());
        }
        buf.extend_from_slice(h.word(&value)?.as_slice());
    }
    Ok((keccak256(&buf), h.work))
}
