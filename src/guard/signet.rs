//! The signet adapter of the pipeline: `btc_signSignetBlock` (the block, hex) and the miner's
//! block PSBT arriving on `btc_signPsbt` (routed here by [`super::bitcoin`]).
//!
//! decide: key and grant, `[policies.signet]`, the key must solve the challenge, strict block
//! decode with the BIP325 commitment rebuilt (`keyguard_bitcoin::signet`), stateless block
//! rules. sign: under one lock, the chain rules against this key's tip (height watermark,
//! gap, parent, median time past) and a provisional tip that stops a second request for the
//! same height; then the backend signs the sighash keyguard computed, pass 2 re-decodes the
//! solved block, and the new tip goes into the audit commit as one conditional statement
//! (`StateWrite::SignetHeight`): if the database's height moved (another instance), nothing
//! is released.
//!
//! Tips live in memory for speed, loaded from the `signet_heights` table at start, and again
//! for a key whose commit lost its height to another writer (the next request reloads them
//! before deciding; until that read succeeds the key is refused).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use keyguard_bitcoin::bitcoin::block::Header;
use keyguard_bitcoin::bitcoin::consensus::{deserialize, serialize};
use keyguard_bitcoin::bitcoin::hashes::Hash;
use keyguard_bitcoin::bitcoin::psbt::Psbt;
use keyguard_bitcoin::bitcoin::secp256k1::PublicKey as SecpKey;
use keyguard_bitcoin::bitcoin::{Amount, TxMerkleNode};
use keyguard_bitcoin::signet::{decode_block, SignetBlock, MAX_BLOCK_BYTES};
use keyguard_bitcoin::signet_finalize::{self, SignedSignetBlock};
use keyguard_bitcoin::signet_rules::{rule, ChainProofs, SignetPolicy, SignetTip};
use keyguard_chain::{KeyId, PublicKey, Rejection};
use serde_json::{json, Value};

use super::pipeline::{Adapter, Ask, Request, Who};
use super::{Guard, GuardError};
use crate::access::Caller;
use crate::store::{AuditEntry, SignetRow, StateWrite, StoreError};

/// The method that takes a block.
pub(super) const METHOD: &str = "btc_signSignetBlock";
/// The chain label of every signet block (audit rows, client chain scopes).
const CHAIN: &str = "bitcoin:signet";
const BLOCK_PARAMS: [&str; 5] = ["block", "key", "parent_header", "mtp", "fees_sat"];
const PSBT_PARAMS: [&str; 6] = [
    "psbt",
    "key",
    "finalize",
    "parent_header",
    "mtp",
    "fees_sat",
];

/// (challenge hex, key): one watermark.
type Slot = (String, KeyId);

#[derive(Default, Clone)]
struct SlotState {
    tip: Option<SignetTip>,
    /// The database moved past this instance's view (another writer): reload before the next
    /// decision, refuse while that fails.
    stale: bool,
}

/// Signet tips per network and key.
#[derive(Default)]
pub(super) struct SignetState {
    slots: Mutex<HashMap<Slot, SlotState>>,
}

impl SignetState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, SlotState>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a signed block answers.
#[derive(Clone, Debug)]
pub struct SignetSigned {
    /// The block and its solution (pass 2 verified).
    pub signed: SignedSignetBlock,
    /// Height.
    pub height: u32,
    /// BIP325 commitment id (`to_spend` txid).
    pub commitment: String,
    /// The miner's PSBT, finalized, when the request was a PSBT.
    pub psbt: Option<Psbt>,
}

impl SignetSigned {
    /// The `btc_signPsbt` answer for the miner's PSBT: finalized, as `walletprocesspsbt`.
    pub(super) fn signed_psbt(&self) -> keyguard_bitcoin::SignedPsbt {
        let psbt = self.psbt.clone().unwrap_or_else(|| Psbt {
            unsigned_tx: self.signed.block.txdata[0].clone(),
            version: 0,
            xpub: Default::default(),
            proprietary: Default::default(),
            unknown: Default::default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        });
        keyguard_bitcoin::SignedPsbt {
            txid: psbt.unsigned_tx.compute_txid(),
            psbt: psbt.to_string(),
            complete: true,
            tx_hex: None,
            signed_inputs: vec![0],
        }
    }

    /// The `btc_signSignetBlock` answer.
    pub fn to_json(&self) -> Value {
        json!({
            "height": self.height,
            "commitment": self.commitment,
            "solution": hex::encode(self.signed.solution.to_bytes()),
            "block": hex::encode(serialize(&self.signed.block)),
            "merkle_root": self.signed.block.header.merkle_root.to_string(),
        })
    }
}

/// The request, as the pipeline sees it before decoding.
pub(super) enum Input {
    /// `btc_signSignetBlock`.
    Block,
    /// The miner's PSBT, already parsed by the router.
    Psbt(Box<Psbt>),
}

struct Decided {
    /// The miner's PSBT, answered with the solution (PSBT requests only).
    psbt: Option<Psbt>,
    key: KeyId,
    policy: Arc<SignetPolicy>,
    public: SecpKey,
    block: SignetBlock,
    proofs: ChainProofs,
}

/// What the sign stage reserved: the tip before, to give back if nothing is released.
struct Reserved {
    slot: Slot,
    height: u32,
    before: Option<SignetTip>,
    commitment: String,
}

/// The signet adapter.
pub(super) struct SignetAdapter {
    key: Option<Result<KeyId, GuardError>>,
    params: Value,
    input: Option<Input>,
    decided: Option<Decided>,
    reserved: Option<Reserved>,
    write: Vec<StateWrite>,
}

impl SignetAdapter {
    pub(super) fn new(key: Result<KeyId, GuardError>, params: Value, input: Input) -> Self {
        SignetAdapter {
            key: Some(key),
            params,
            input: Some(input),
            decided: None,
            reserved: None,
            write: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl<'g> Adapter<'g> for SignetAdapter {
    type Out = SignetSigned;

    async fn decide(
        &mut self,
        guard: &'g Guard,
        who: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        let Who::Client(caller) = who else {
            return Err(GuardError::Backend(
                "signet requests come from clients".into(),
            ));
        };
        let key = self
            .key
            .take()
            .ok_or_else(|| GuardError::Backend("request decided twice".into()))??;
        entry.key_id = Some(key.to_string());
        entry.chain = Some(CHAIN.into());
        let input = self
            .input
            .take()
            .ok_or_else(|| GuardError::Backend("request decided twice".into()))?;
        self.decided = Some(guard.signet_decide(caller, key, &self.params, input, entry)?);
        // Consensus work cannot wait for people: no approval stage.
        Ok(None)
    }

    async fn sign(
        &mut self,
        guard: &'g Guard,
        entry: &mut AuditEntry,
    ) -> Result<SignetSigned, GuardError> {
        let d = self
            .decided
            .take()
            .ok_or_else(|| GuardError::Backend("signing before a decision".into()))?;
        let slot = (d.policy.challenge.script.to_hex_string(), d.key.clone());
        guard.signet_reload_if_stale(&slot).await;
        let reserved = guard.signet_reserve(&slot, &d)?;
        let commitment = d.block.commitment().to_string();
        let signed = match guard.signet_sign(&d).await {
            Ok(s) => s,
            Err(e) => {
                guard.signet_release(&reserved);
                return Err(e);
            }
        };
        let tip = SignetTip::after(
            reserved.before.as_ref(),
            &d.block,
            signed.block.header.merkle_root,
        );
        guard.signet_keep(&slot, &tip);
        entry.tx_hash = Some(commitment.clone());
        if let Value::Object(m) = &mut entry.summary {
            m.insert(
                "merkle_root".into(),
                signed.block.header.merkle_root.to_string().into(),
            );
        }
        self.write = vec![StateWrite::SignetHeight {
            challenge: slot.0.clone(),
            key_id: slot.1.to_string(),
            reorg_depth: d.policy.reorg_depth,
            tip: Box::new(tip),
        }];
        self.reserved = Some(reserved);
        let psbt = d.psbt.map(|p| signed.answer_psbt(p));
        Ok(SignetSigned {
            height: d.block.height,
            commitment,
            signed,
            psbt,
        })
    }

    fn writes(&mut self) -> Vec<StateWrite> {
        std::mem::take(&mut self.write)
    }

    fn settle(
        &mut self,
        guard: &'g Guard,
        committed: Result<(), &StoreError>,
    ) -> Option<GuardError> {
        let reserved = self.reserved.take()?;
        match committed {
            Ok(()) => {
                crate::metrics::signet_height(reserved.slot.1.as_str(), reserved.height);
                None
            }
            Err(StoreError::StateConflict(e)) => {
                guard.signet_stale(&reserved.slot);
                Some(
                    Rejection::policy(
                        rule::HEIGHT,
                        "coinbase.height",
                        format!("the stored watermark moved (another instance?); signature withheld: {e}"),
                    )
                    .into(),
                )
            }
            Err(_) => {
                guard.signet_release(&reserved);
                None
            }
        }
    }
}

/// Whether a `btc_signPsbt` request carries the miner's block PSBT; parsed once if so.
pub(super) fn route(params: &Value) -> Option<Psbt> {
    const KEY: &[u8] = b"\x09\xfc\x06signetb";
    let b64 = params.get("psbt")?.as_str()?;
    use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    let bytes = BASE64_STANDARD.decode(b64.trim()).ok()?;
    if !bytes.windows(KEY.len()).any(|w| w == KEY) {
        return None;
    }
    signet_finalize::parse_block_psbt(b64)
        .ok()
        .filter(signet_finalize::is_signet_psbt)
}

fn optional_u64(params: &Value, name: &str) -> Result<Option<u64>, Rejection> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Rejection::invalid(name, "must be a non-negative integer")),
    }
}

fn proofs(params: &Value) -> Result<(ChainProofs, Option<Amount>), Rejection> {
    let parent = match params.get("parent_header") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = v.as_str().filter(|s| s.len() == 160).ok_or_else(|| {
                Rejection::invalid("parent_header", "must be an 80-byte header, hex")
            })?;
            let bytes = hex::decode(text)
                .map_err(|e| Rejection::invalid("parent_header", e.to_string()))?;
            Some(
                deserialize::<Header>(&bytes)
                    .map_err(|e| Rejection::invalid("parent_header", e.to_string()))?,
            )
        }
    };
    let mtp = optional_u64(params, "mtp")?
        .map(|m| u32::try_from(m).map_err(|_| Rejection::invalid("mtp", "above u32")))
        .transpose()?;
    let fees = optional_u64(params, "fees_sat")?.map(Amount::from_sat);
    Ok((ChainProofs { parent, mtp }, fees))
}

impl Guard {
    /// `btc_signSignetBlock`: the whole pipeline for one block.
    pub async fn sign_signet_block(
        &self,
        caller: &Caller,
        params: &Value,
    ) -> Result<SignetSigned, GuardError> {
        let key = self.signet_key(caller, params.get("key").and_then(Value::as_str));
        let request = Request {
            who: Who::Client(caller),
            method: METHOD,
            family: super::family::BITCOIN_PSBT,
            chain: CHAIN.into(),
            key_hint: key.as_ref().ok().cloned(),
        };
        let adapter = SignetAdapter::new(key, params.clone(), Input::Block);
        self.run(request, adapter).await
    }

    /// The key a signet request names, or the only key with signet rules this caller may use.
    pub(super) fn signet_key(
        &self,
        caller: &Caller,
        named: Option<&str>,
    ) -> Result<KeyId, GuardError> {
        if let Some(name) = named {
            return KeyId::new(name).map_err(|e| Rejection::invalid("key", e.to_string()).into());
        }
        let candidates: Vec<KeyId> = self
            .backend
            .keys()
            .into_iter()
            .map(|k| k.id)
            .filter(|id| {
                caller.may_use(id) && self.policy_for(id).is_some_and(|p| p.signet.is_some())
            })
            .collect();
        match candidates.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                Err(Rejection::invalid("key", "no signet key is available to this client").into())
            }
            _ => {
                Err(Rejection::invalid("key", "several signet keys: name one with \"key\"").into())
            }
        }
    }

    fn signet_decide(
        &self,
        caller: &Caller,
        key: KeyId,
        params: &Value,
        input: Input,
        entry: &mut AuditEntry,
    ) -> Result<Decided, GuardError> {
        if !caller.may_use(&key) {
            return Err(GuardError::Unauthorized(format!(
                "key {key} is not granted to client {}",
                caller.name
            )));
        }
        let known: &[&str] = match input {
            Input::Block => &BLOCK_PARAMS,
            Input::Psbt(_) => &PSBT_PARAMS,
        };
        let unknown = params
            .as_object()
            .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())));
        if let Some(name) = unknown {
            return Err(Rejection::invalid(name.as_str(), "unknown parameter").into());
        }
        Self::check_chain(caller, CHAIN)?;
        let kp = self.policy_for(&key);
        let policy = kp.as_ref().and_then(|p| p.signet.clone()).ok_or_else(|| {
            Rejection::policy(
                "policy.none",
                "key",
                format!("no policy with signet rules governs key {key}"),
            )
        })?;
        let public = match self.backend.public_key(&key) {
            Ok(PublicKey::Secp256k1(point)) => SecpKey::from_slice(&point).ok(),
            _ => None,
        }
        .ok_or_else(|| Rejection::invalid("key", format!("{key} is not a secp256k1 key")))?;
        if !policy.challenge.solvable_by(&public) {
            return Err(Rejection::policy(
                rule::CHALLENGE,
                "key",
                format!("{key} is not a key of the configured challenge"),
            )
            .into());
        }
        let (block, psbt) = match input {
            Input::Psbt(psbt) => {
                if params.get("finalize") == Some(&Value::Bool(false)) {
                    return Err(Rejection::invalid(
                        "finalize",
                        "a signet block PSBT is always answered finalized",
                    )
                    .into());
                }
                (
                    signet_finalize::decode_psbt(&psbt, &policy.challenge)?,
                    Some(*psbt),
                )
            }
            Input::Block => {
                let text = params
                    .get("block")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Rejection::invalid("block", "missing hex block"))?;
                if text.len() > 2 * MAX_BLOCK_BYTES {
                    return Err(Rejection::invalid("block", "larger than a block can be").into());
                }
                let bytes =
                    hex::decode(text).map_err(|e| Rejection::invalid("block", e.to_string()))?;
                (decode_block(&bytes, &policy.challenge)?, None)
            }
        };
        entry.summary = block.summary();
        if let (Some(p), Value::Object(m)) = (&kp, &mut entry.summary) {
            m.insert("policy".into(), Value::String(p.name.clone()));
        }
        let (proofs, fees) = proofs(params)?;
        policy.check_block(&block, super::now_ms() / 1000, fees)?;
        Ok(Decided {
            psbt,
            key,
            policy,
            public,
            block,
            proofs,
        })
    }

    /// Chain rules against the tip and a provisional tip at the new height, under one lock.
    fn signet_reserve(&self, slot: &Slot, d: &Decided) -> Result<Reserved, GuardError> {
        let mut slots = self.signet.lock();
        let state = slots.entry(slot.clone()).or_default();
        if state.stale {
            return Err(Rejection::policy(
                rule::HEIGHT,
                "coinbase.height",
                "the stored watermark moved outside this instance and could not be read again",
            )
            .into());
        }
        d.policy
            .check_chain(&d.block, state.tip.as_ref(), &d.proofs)?;
        let before = state.tip.clone();
        let provisional = SignetTip::after(before.as_ref(), &d.block, TxMerkleNode::all_zeros());
        state.tip = Some(provisional);
        Ok(Reserved {
            slot: slot.clone(),
            height: d.block.height,
            before,
            commitment: d.block.commitment().to_string(),
        })
    }

    async fn signet_sign(&self, d: &Decided) -> Result<SignedSignetBlock, GuardError> {
        let started = std::time::Instant::now();
        let signature = self
            .backend
            .sign(&d.key, &d.block.payload(&d.policy.challenge))
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        crate::metrics::sign(self.backend.name(), started.elapsed());
        signet_finalize::finalize(&d.block, &d.policy.challenge, &d.public, &signature)
            .map_err(|e| super::pass2(&d.key, e))
    }

    fn signet_keep(&self, slot: &Slot, tip: &SignetTip) {
        if let Some(state) = self.signet.lock().get_mut(slot) {
            state.tip = Some(tip.clone());
        }
    }

    /// Gives the height back when nothing was released (only if no later request moved on).
    fn signet_release(&self, r: &Reserved) {
        if let Some(state) = self.signet.lock().get_mut(&r.slot) {
            if state
                .tip
                .as_ref()
                .is_some_and(|t| t.commitment == r.commitment)
            {
                state.tip = r.before.clone();
            }
        }
    }

    fn signet_stale(&self, slot: &Slot) {
        tracing::error!(key = %slot.1, "signet watermark moved outside this instance; reloading it before the next block");
        self.signet.lock().entry(slot.clone()).or_default().stale = true;
    }

    /// Reads the tips again when `slot` is stale; on success it carries the database's tip (or
    /// none) and is no longer stale. A failed read leaves it stale: the reserve refuses.
    async fn signet_reload_if_stale(&self, slot: &Slot) {
        let stale = self.signet.lock().get(slot).is_some_and(|s| s.stale);
        let Some(read) = self.signet_tips.get().filter(|_| stale).cloned() else {
            return;
        };
        let rows = tokio::task::spawn_blocking(move || read())
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))
            .and_then(|r| r);
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(key = %slot.1, error = %e, "signet tips could not be read again");
                return;
            }
        };
        let tip = rows
            .into_iter()
            .find(|r| r.challenge == slot.0 && r.key_id == slot.1.as_str())
            .map(|r| r.tip);
        self.signet
            .lock()
            .insert(slot.clone(), SlotState { tip, stale: false });
    }

    /// Loads the signet tips from the store (at start).
    pub(super) fn restore_signet(&self, rows: Vec<SignetRow>) -> Result<(), StoreError> {
        let mut slots = self.signet.lock();
        for row in rows {
            let key = KeyId::new(row.key_id.as_str()).map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: format!("signet_heights: {e}"),
            })?;
            slots.insert(
                (row.challenge, key),
                SlotState {
                    tip: Some(row.tip),
                    stale: false,
                },
            );
        }
        Ok(())
    }
}
