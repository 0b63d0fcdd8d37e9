//! Structure-aware generator of hostile EIP-712 typed data: long chains of struct types through
//! arrays, diamond-shaped type graphs, recursive types, huge arrays and long strings. Byte-level
//! fuzzing of JSON almost never produces a 1,500-type chain or a 2^20-node diamond, which is why
//! 10 M executions of the plain target missed the input that aborted the daemon; this generator
//! makes each such shape a few bytes of fuzzer input. Used by the `evm_typed_shapes` fuzz
//! target, its corpus replay, the decoder tests and the adversarial edge suite.
#![doc(hidden)]

use serde_json::{json, Map, Value};

/// One hostile shape: `types` struct types `T0 .. T{types-1}`, each with `fanout` fields of the
/// next type wrapped in `dims` array dimensions, the last with a `uint256` and a `string`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Struct types in the chain.
    pub types: usize,
    /// Fields of the next type per struct (2 or more makes a diamond).
    pub fanout: usize,
    /// Array dimensions on each struct field (`[]` each).
    pub dims: usize,
    /// Elements per array in the message.
    pub array_len: usize,
    /// Bytes of the leaf string.
    pub string_len: usize,
    /// The last type refers back to the first (a cycle).
    pub cycle: bool,
    /// Most JSON values the generator builds for the message (it stops filling arrays there).
    pub budget: usize,
}

impl Shape {
    /// The crash of issue 14: 1,500 types chained through one-dimensional arrays.
    pub const CHAIN_1500: Shape = Shape {
        types: 1_500,
        fanout: 1,
        dims: 1,
        array_len: 0,
        string_len: 0,
        cycle: false,
        budget: 0,
    };

    /// Reads a shape from fuzzer bytes (missing bytes read as zero).
    pub fn from_bytes(data: &[u8]) -> Shape {
        let b = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
        let types = match b(0) {
            0..=199 => b(0) % 40 + 1,
            200..=249 => 16 + b(1) * 8,
            _ => 1_000 + b(1) * 8,
        };
        Shape {
            types,
            fanout: b(2) % 4 + 1,
            dims: b(3) % 4,
            array_len: match b(4) {
                0..=199 => b(4) % 8,
                _ => 500 + b(5) * 8,
            },
            string_len: b(6) * b(6) * 4,
            cycle: b(7) & 1 == 1,
            budget: 64 + b(8) * 256,
        }
    }

    /// The typed data of this shape (domain on chain 1, primary type `T0`).
    pub fn typed_data(&self) -> Value {
        let n = self.types.max(1);
        let mut types = Map::new();
        types.insert(
            "EIP712Domain".into(),
            json!([{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}]),
        );
        let brackets = "[]".repeat(self.dims);
        for i in 0..n {
            let fields: Vec<Value> = if i + 1 < n || self.cycle {
                let next = (i + 1) % n;
                (0..self.fanout)
                    .map(|f| json!({"name": format!("f{f}"), "type": format!("T{next}{brackets}")}))
                    .collect()
            } else {
                vec![
                    json!({"name": "amount", "type": "uint256"}),
                    json!({"name": "note", "type": "string"}),
                ]
            };
            types.insert(format!("T{i}"), Value::Array(fields));
        }
        json!({
            "types": types,
            "primaryType": "T0",
            "domain": {"name": "shape", "chainId": 1},
            "message": self.message(n),
        })
    }

    /// Builds the message bottom-up (no recursion, so the generator itself never overflows),
    /// filling arrays until the value budget is spent and leaving them empty above it.
    fn message(&self, n: usize) -> Value {
        let mut value = json!({"amount": "1", "note": "x".repeat(self.string_len)});
        let mut size = 3usize;
        let mut depth = 1usize;
        for _ in 0..n.saturating_sub(1) {
            // JSON requests cannot nest deeper than the parser's limit (128); past it, the
            // generator's own Value would be cloned and dropped recursively, so the message
            // stops there (the types, which do the damage, are complete).
            depth += self.dims + 1;
            if depth > 100 {
                return json!({});
            }
            let mut wrapped = value;
            let mut wrapped_size = size;
            for _ in 0..self.dims {
                let grown = wrapped_size
                    .saturating_mul(self.array_len)
                    .saturating_add(1);
                if grown > self.budget {
                    wrapped = json!([]);
                    wrapped_size = 1;
                } else {
                    wrapped = Value::Array(vec![wrapped; self.array_len]);
                    wrapped_size = grown;
                }
            }
            let mut o = Map::new();
            for f in 0..self.fanout {
                o.insert(format!("f{f}"), wrapped.clone());
            }
            size = wrapped_size.saturating_mul(self.fanout).saturating_add(1);
            value = Value::Object(o);
            if size > self.budget.max(64) * 4 && self.dims == 0 {
                // A struct field cannot be left empty; stop nesting values (the decoder must
                // still refuse the types, or the missing fields).
                return json!({});
            }
        }
        value
    }
}

/// The most expensive shapes that stay inside the decoder's caps, and the hostile ones just
/// beyond them: what the edge suite sends and the bounded-work tests decode.
pub fn worst_shapes() -> Vec<(&'static str, Shape)> {
    let base = Shape {
        types: 1,
        fanout: 1,
        dims: 0,
        array_len: 0,
        string_len: 0,
        cycle: false,
        budget: 0,
    };
    vec![
        ("chain of 1,500 types through arrays", Shape::CHAIN_1500),
        (
            "chain of 1,500 types, direct fields",
            Shape {
                dims: 0,
                ..Shape::CHAIN_1500
            },
        ),
        (
            "chain of 1,500 types, 4 dimensions",
            Shape {
                dims: 4,
                ..Shape::CHAIN_1500
            },
        ),
        (
            "diamond of 40 levels",
            Shape {
                types: 40,
                fanout: 2,
                ..base
            },
        ),
        (
            "recursive types",
            Shape {
                types: 8,
                dims: 1,
                cycle: true,
                ..base
            },
        ),
        (
            "deepest chain inside the caps, arrays filled",
            Shape {
                types: 16,
                dims: 1,
                array_len: 2,
                budget: 16_000,
                ..base
            },
        ),
        (
            "one array of 1,024 structs of 15 types",
            Shape {
                types: 16,
                dims: 1,
                array_len: 1_024,
                budget: 15_000,
                ..Shape { fanout: 1, ..base }
            },
        ),
        (
            "an array longer than the cap",
            Shape {
                types: 2,
                dims: 1,
                array_len: 5_000,
                budget: 20_000,
                ..base
            },
        ),
        (
            "a diamond just inside the expansion cap, filled",
            Shape {
                types: 11,
                fanout: 2,
                budget: 16_000,
                ..base
            },
        ),
        (
            "a 60 KiB string",
            Shape {
                types: 1,
                string_len: 60 * 1024,
                ..base
            },
        ),
        (
            "a 1 MiB string",
            Shape {
                types: 1,
                string_len: 1 << 20,
                ..base
            },
        ),
    ]
}
