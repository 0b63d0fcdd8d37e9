//! PSBT version 2 (BIP370) by conversion: the `bitcoin` crate reads only version 0, so a v2
//! PSBT is parsed as raw key-value maps, checked, turned into the equivalent v0 PSBT (unsigned
//! transaction rebuilt from the per-input and per-output fields) and, after signing, turned back
//! into v2 with its own fields restored. The raw map reader also enforces, for both versions,
//! what the typed parser might tolerate: no duplicate keys and nothing after the last map.

use bitcoin::absolute::LockTime;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};

/// Upper bound on inputs and outputs (a standard transaction is far smaller; this bounds the
/// work one request can cause).
pub const MAX_IO: usize = 2_000;

const MAGIC: &[u8] = b"psbt\xff";
const G_UNSIGNED_TX: u8 = 0x00;
const G_TX_VERSION: u8 = 0x02;
const G_FALLBACK_LOCKTIME: u8 = 0x03;
const G_INPUT_COUNT: u8 = 0x04;
const G_OUTPUT_COUNT: u8 = 0x05;
const G_TX_MODIFIABLE: u8 = 0x06;
const G_VERSION: u8 = 0xfb;
const I_PREVIOUS_TXID: u8 = 0x0e;
const I_OUTPUT_INDEX: u8 = 0x0f;
const I_SEQUENCE: u8 = 0x10;
const I_REQUIRED_TIME: u8 = 0x11;
const I_REQUIRED_HEIGHT: u8 = 0x12;
const O_AMOUNT: u8 = 0x03;
const O_SCRIPT: u8 = 0x04;

const V2_GLOBALS: &[u8] = &[
    G_TX_VERSION,
    G_FALLBACK_LOCKTIME,
    G_INPUT_COUNT,
    G_OUTPUT_COUNT,
    G_TX_MODIFIABLE,
    G_VERSION,
];
const V2_INPUTS: &[u8] = &[
    I_PREVIOUS_TXID,
    I_OUTPUT_INDEX,
    I_SEQUENCE,
    I_REQUIRED_TIME,
    I_REQUIRED_HEIGHT,
];
const V2_OUTPUTS: &[u8] = &[O_AMOUNT, O_SCRIPT];

/// One key-value pair; `key` starts with the type byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pair {
    key: Vec<u8>,
    value: Vec<u8>,
}

type Map = Vec<Pair>;

/// A PSBT as maps, before any field is interpreted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawPsbt {
    global: Map,
    inputs: Vec<Map>,
    outputs: Vec<Map>,
}

/// The v2-only fields of a PSBT, kept to be put back after signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Fields {
    global: Map,
    inputs: Vec<Map>,
    outputs: Vec<Map>,
}

/// Why a PSBT's raw structure was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RawError(pub String);

fn err<T>(reason: impl Into<String>) -> Result<T, RawError> {
    Err(RawError(reason.into()))
}

fn compact(buf: &mut &[u8]) -> Result<u64, RawError> {
    let (&first, rest) = buf
        .split_first()
        .ok_or_else(|| RawError("truncated".into()))?;
    let width = match first {
        0xfd => 2,
        0xfe => 4,
        0xff => 8,
        n => {
            *buf = rest;
            return Ok(n.into());
        }
    };
    if rest.len() < width {
        return err("truncated compact size");
    }
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(&rest[..width]);
    let n = u64::from_le_bytes(le);
    let minimal = match width {
        2 => n >= 0xfd,
        4 => n > 0xffff,
        _ => n > 0xffff_ffff,
    };
    if !minimal {
        return err("non-minimal compact size");
    }
    *buf = &rest[width..];
    Ok(n)
}

fn put_compact(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], RawError> {
    let n = usize::try_from(n).map_err(|_| RawError("length overflow".into()))?;
    if buf.len() < n {
        return err("truncated");
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn read_map(buf: &mut &[u8]) -> Result<Map, RawError> {
    let mut map: Map = Vec::new();
    loop {
        let key_len = compact(buf)?;
        if key_len == 0 {
            return Ok(map);
        }
        let key = take(buf, key_len)?.to_vec();
        let value_len = compact(buf)?;
        let value = take(buf, value_len)?.to_vec();
        // Two values for one key would let two parsers disagree on what is being signed.
        if map.iter().any(|p| p.key == key) {
            return err(format!("duplicate key 0x{}", hex::encode(&key)));
        }
        map.push(Pair { key, value });
    }
}

fn get(map: &Map, kind: u8) -> Result<Option<&[u8]>, RawError> {
    match map.iter().find(|p| p.key.first() == Some(&kind)) {
        None => Ok(None),
        Some(p) if p.key.len() == 1 => Ok(Some(&p.value)),
        Some(_) => err(format!("key type 0x{kind:02x} must have no key data")),
    }
}

fn u32_of(value: &[u8], what: &str) -> Result<u32, RawError> {
    value
        .try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| RawError(format!("{what} is not 4 bytes")))
}

fn count_of(value: Option<&[u8]>, what: &str) -> Result<usize, RawError> {
    let mut v = value.ok_or_else(|| RawError(format!("missing {what}")))?;
    let n = compact(&mut v)?;
    if !v.is_empty() {
        return err(format!("trailing bytes in {what}"));
    }
    match usize::try_from(n) {
        Ok(n) if n <= MAX_IO => Ok(n),
        _ => err(format!("{what} {n} exceeds {MAX_IO}")),
    }
}

/// Parses the maps. The number of input and output maps comes from the unsigned transaction
/// (v0) or the count fields (v2). Returns the maps and the PSBT version.
pub(crate) fn parse_raw(bytes: &[u8]) -> Result<(RawPsbt, u32), RawError> {
    let mut buf = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| RawError("missing PSBT magic".into()))?;
    let global = read_map(&mut buf)?;
    let version = get(&global, G_VERSION)?
        .map(|v| u32_of(v, "PSBT_GLOBAL_VERSION"))
        .transpose()?
        .unwrap_or(0);
    let (n_in, n_out) = match version {
        0 => {
            let raw = get(&global, G_UNSIGNED_TX)?
                .ok_or_else(|| RawError("v0 PSBT without an unsigned transaction".into()))?;
            let tx: Transaction =
                deserialize(raw).map_err(|e| RawError(format!("unsigned transaction: {e}")))?;
            (tx.input.len(), tx.output.len())
        }
        2 => {
            if get(&global, G_UNSIGNED_TX)?.is_some() {
                return err("v2 PSBT must not carry an unsigned transaction");
            }
            (
                count_of(get(&global, G_INPUT_COUNT)?, "input count")?,
                count_of(get(&global, G_OUTPUT_COUNT)?, "output count")?,
            )
        }
        v => return err(format!("unsupported PSBT version {v}")),
    };
    if n_in > MAX_IO || n_out > MAX_IO {
        return err(format!("more than {MAX_IO} inputs or outputs"));
    }
    let inputs = (0..n_in)
        .map(|_| read_map(&mut buf))
        .collect::<Result<_, _>>()?;
    let outputs = (0..n_out)
        .map(|_| read_map(&mut buf))
        .collect::<Result<_, _>>()?;
    if !buf.is_empty() {
        return err("trailing bytes after the last output map");
    }
    let raw = RawPsbt {
        global,
        inputs,
        outputs,
    };
    Ok((raw, version))
}

fn write_map(out: &mut Vec<u8>, map: &Map) {
    for p in map {
        put_compact(out, p.key.len());
        out.extend_from_slice(&p.key);
        put_compact(out, p.value.len());
        out.extend_from_slice(&p.value);
    }
    out.push(0);
}

pub(crate) fn write_raw(raw: &RawPsbt) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    write_map(&mut out, &raw.global);
    raw.inputs.iter().for_each(|m| write_map(&mut out, m));
    raw.outputs.iter().for_each(|m| write_map(&mut out, m));
    out
}

fn split(map: &Map, v2_only: &[u8]) -> (Map, Map) {
    map.iter()
        .cloned()
        .partition(|p| p.key.len() == 1 && v2_only.contains(&p.key[0]))
}

/// BIP370 locktime: the largest required lock of the kind every constrained input accepts.
fn locktime(raw: &RawPsbt) -> Result<LockTime, RawError> {
    let fallback = get(&raw.global, G_FALLBACK_LOCKTIME)?
        .map(|v| u32_of(v, "fallback locktime"))
        .transpose()?
        .unwrap_or(0);
    let (mut any, mut all_height, mut all_time) = (false, true, true);
    let (mut height, mut time) = (0u32, 0u32);
    for m in &raw.inputs {
        let t = get(m, I_REQUIRED_TIME)?
            .map(|v| u32_of(v, "required time locktime"))
            .transpose()?;
        let h = get(m, I_REQUIRED_HEIGHT)?
            .map(|v| u32_of(v, "required height locktime"))
            .transpose()?;
        if t.is_some() || h.is_some() {
            any = true;
            all_height &= h.is_some();
            all_time &= t.is_some();
        }
        if let Some(t) = t {
            if t < 500_000_000 {
                return err("required time locktime below 500000000");
            }
            time = time.max(t);
        }
        if let Some(h) = h {
            if h == 0 || h >= 500_000_000 {
                return err("required height locktime out of range");
            }
            height = height.max(h);
        }
    }
    let value = match (any, all_height, all_time) {
        (false, _, _) => fallback,
        (true, true, _) => height,
        (true, false, true) => time,
        _ => return err("inputs require incompatible locktime kinds"),
    };
    Ok(LockTime::from_consensus(value))
}

/// Turns a v2 PSBT's maps into v0 bytes the typed parser reads, and the v2 fields to restore.
pub(crate) fn v2_to_v0(raw: &RawPsbt) -> Result<(Vec<u8>, V2Fields), RawError> {
    let version = get(&raw.global, G_TX_VERSION)?
        .ok_or_else(|| RawError("missing PSBT_GLOBAL_TX_VERSION".into()))?;
    let version = bitcoin::transaction::Version(u32_of(version, "tx version")? as i32);
    let mut input = Vec::with_capacity(raw.inputs.len());
    for (i, m) in raw.inputs.iter().enumerate() {
        let txid = get(m, I_PREVIOUS_TXID)?
            .ok_or_else(|| RawError(format!("input {i}: missing previous txid")))?;
        let txid = Txid::from_slice(txid)
            .map_err(|_| RawError(format!("input {i}: previous txid is not 32 bytes")))?;
        let vout = get(m, I_OUTPUT_INDEX)?
            .ok_or_else(|| RawError(format!("input {i}: missing output index")))?;
        let sequence = get(m, I_SEQUENCE)?
            .map(|v| u32_of(v, "sequence"))
            .transpose()?
            .map_or(Sequence::MAX, Sequence);
        input.push(TxIn {
            previous_output: OutPoint::new(txid, u32_of(vout, "output index")?),
            script_sig: ScriptBuf::new(),
            sequence,
            witness: Witness::new(),
        });
    }
    let mut output = Vec::with_capacity(raw.outputs.len());
    for (i, m) in raw.outputs.iter().enumerate() {
        let amount =
            get(m, O_AMOUNT)?.ok_or_else(|| RawError(format!("output {i}: missing amount")))?;
        let amount: [u8; 8] = amount
            .try_into()
            .map_err(|_| RawError(format!("output {i}: amount is not 8 bytes")))?;
        let amount = u64::try_from(i64::from_le_bytes(amount))
            .ok()
            .filter(|a| *a <= Amount::MAX_MONEY.to_sat())
            .ok_or_else(|| RawError(format!("output {i}: amount out of range")))?;
        let script =
            get(m, O_SCRIPT)?.ok_or_else(|| RawError(format!("output {i}: missing script")))?;
        output.push(TxOut {
            value: Amount::from_sat(amount),
            script_pubkey: ScriptBuf::from_bytes(script.to_vec()),
        });
    }
    let tx = Transaction {
        version,
        lock_time: locktime(raw)?,
        input,
        output,
    };
    let (g2, mut g0) = split(&raw.global, V2_GLOBALS);
    g0.insert(
        0,
        Pair {
            key: vec![G_UNSIGNED_TX],
            value: serialize(&tx),
        },
    );
    let (mut in2, mut in0) = (Vec::new(), Vec::new());
    for m in &raw.inputs {
        let (v2, v0) = split(m, V2_INPUTS);
        in2.push(v2);
        in0.push(v0);
    }
    let (mut out2, mut out0) = (Vec::new(), Vec::new());
    for m in &raw.outputs {
        let (v2, v0) = split(m, V2_OUTPUTS);
        out2.push(v2);
        out0.push(v0);
    }
    let v0 = RawPsbt {
        global: g0,
        inputs: in0,
        outputs: out0,
    };
    let fields = V2Fields {
        global: g2,
        inputs: in2,
        outputs: out2,
    };
    Ok((write_raw(&v0), fields))
}

/// Puts the v2 fields back into a v0 PSBT's bytes. After an ALL signature neither inputs nor
/// outputs may change, so BIP370 asks the signer to clear both "modifiable" flags.
pub(crate) fn v0_to_v2(v0: &[u8], fields: &V2Fields) -> Result<Vec<u8>, RawError> {
    let (mut raw, _) = parse_raw(v0)?;
    if raw.inputs.len() != fields.inputs.len() || raw.outputs.len() != fields.outputs.len() {
        return err("input or output count changed");
    }
    raw.global.retain(|p| p.key != [G_UNSIGNED_TX]);
    for p in &fields.global {
        let mut p = p.clone();
        if p.key == [G_TX_MODIFIABLE] {
            if let Some(flags) = p.value.first_mut() {
                *flags &= !0b11;
            }
        }
        raw.global.push(p);
    }
    for (m, extra) in raw.inputs.iter_mut().zip(&fields.inputs) {
        m.extend(extra.iter().cloned());
    }
    for (m, extra) in raw.outputs.iter_mut().zip(&fields.outputs) {
        m.extend(extra.iter().cloned());
    }
    for m in std::iter::once(&mut raw.global)
        .chain(raw.inputs.iter_mut())
        .chain(raw.outputs.iter_mut())
    {
        m.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Ok(write_raw(&raw))
}

#[cfg(any(test, feature = "testkit"))]
pub(crate) fn v0_to_v2_fresh(v0: &[u8]) -> Vec<u8> {
    //! Test helper: builds a v2 PSBT from a v0 one (the Creator/Constructor roles of BIP370).
    let (raw, _) = parse_raw(v0).expect("valid v0 PSBT");
    let tx_raw = get(&raw.global, G_UNSIGNED_TX)
        .ok()
        .flatten()
        .expect("unsigned tx");
    let tx: Transaction = deserialize(tx_raw).expect("unsigned tx");
    let pair = |k: u8, v: Vec<u8>| Pair {
        key: vec![k],
        value: v,
    };
    let count = |n: usize| {
        let mut v = Vec::new();
        put_compact(&mut v, n);
        v
    };
    let fields = V2Fields {
        global: vec![
            pair(G_TX_VERSION, (tx.version.0 as u32).to_le_bytes().to_vec()),
            pair(
                G_FALLBACK_LOCKTIME,
                tx.lock_time.to_consensus_u32().to_le_bytes().to_vec(),
            ),
            pair(G_INPUT_COUNT, count(tx.input.len())),
            pair(G_OUTPUT_COUNT, count(tx.output.len())),
            pair(G_TX_MODIFIABLE, vec![0b11]),
            pair(G_VERSION, 2u32.to_le_bytes().to_vec()),
        ],
        inputs: tx
            .input
            .iter()
            .map(|i| {
                vec![
                    pair(
                        I_PREVIOUS_TXID,
                        i.previous_output.txid.to_byte_array().to_vec(),
                    ),
                    pair(
                        I_OUTPUT_INDEX,
                        i.previous_output.vout.to_le_bytes().to_vec(),
                    ),
                    pair(I_SEQUENCE, i.sequence.0.to_le_bytes().to_vec()),
                ]
            })
            .collect(),
        outputs: tx
            .output
            .iter()
            .map(|o| {
                vec![
                    pair(O_AMOUNT, (o.value.to_sat() as i64).to_le_bytes().to_vec()),
                    pair(O_SCRIPT, o.script_pubkey.to_bytes()),
                ]
            })
            .collect(),
    };
    v0_to_v2(v0, &fields).expect("convertible")
}
