//! Which keys the Bitcoin path signs with and what it tells clients about them.
//!
//! Two kinds of key: BIP32 seeds (software keystore), with BIP84/BIP86 accounts re-derived
//! from xpubs; and single non-HD secp256k1 keys (PKCS#11 tokens have no BIP32), which spend
//! `wpkh(<pubkey>)` outputs only. The backend never sees which: a seed signs through
//! `sign_derived` with a path, a single key through `sign` with the same ECDSA payload.

use keyguard_bitcoin::bitcoin::bip32::ChildNumber;
use keyguard_bitcoin::bitcoin::NetworkKind;
use keyguard_bitcoin::single::SingleKey;
use keyguard_bitcoin::wallet::{account_path, Account, Wallet};
use keyguard_bitcoin::{BitcoinPolicy, SignedPsbt, SpendIntent};
use keyguard_chain::{KeyId, PublicKey, Rejection};
use serde_json::{json, Value};

use super::{Guard, GuardError};
use crate::access::Caller;
use crate::backend::KeyBackend;

/// The public view of `key` that `policy` lets keyguard sign for: BIP84 and BIP86 accounts of
/// a seed (xpubs derived inside the backend), or the `wpkh(<pubkey>)` wallet of a single key.
pub fn build_wallet(
    backend: &dyn KeyBackend,
    key: &KeyId,
    policy: &BitcoinPolicy,
) -> Result<Wallet, GuardError> {
    let Some(fingerprint) = backend
        .seeds()
        .into_iter()
        .find(|(id, _)| id == key)
        .map(|(_, fp)| fp)
    else {
        return single_wallet(backend, key, policy);
    };
    let mut accounts = Vec::new();
    for kind in &policy.script_types {
        for n in &policy.accounts {
            let path = account_path(*kind, policy.network, *n)
                .ok_or_else(|| Rejection::invalid("accounts", "account out of range"))?;
            let xpub = backend
                .account_xpub(key, &path, NetworkKind::from(policy.network))
                .map_err(|e| GuardError::Backend(e.to_string()))?;
            accounts.push(Account {
                kind: *kind,
                path,
                xpub,
            });
        }
    }
    Ok(Wallet {
        fingerprint,
        network: policy.network,
        accounts,
        max_index: policy.max_index,
        change_gap: policy.change_gap,
        single: None,
    })
}

fn single_wallet(
    backend: &dyn KeyBackend,
    key: &KeyId,
    policy: &BitcoinPolicy,
) -> Result<Wallet, GuardError> {
    let not_usable = || Rejection::invalid("key", format!("{key} is not a secp256k1 key or seed"));
    let Ok(PublicKey::Secp256k1(point)) = backend.public_key(key) else {
        return Err(not_usable().into());
    };
    let public_key = keyguard_bitcoin::bitcoin::secp256k1::PublicKey::from_slice(&point)
        .map_err(|_| not_usable())?;
    let no_taproot = match backend.name() {
        "pkcs11" => "PKCS#11 has no BIP340 Schnorr mechanism".to_string(),
        other => format!("{other} single keys are registered as wpkh(<pubkey>) only"),
    };
    Ok(Wallet::single(
        policy.network,
        SingleKey {
            public_key,
            no_taproot,
        },
    ))
}

/// The account number of a BIP44-style account path (its last, hardened, step).
fn account_number(path: &keyguard_bitcoin::bitcoin::bip32::DerivationPath) -> u32 {
    match path.as_ref().last() {
        Some(ChildNumber::Hardened { index }) | Some(ChildNumber::Normal { index }) => *index,
        None => 0,
    }
}

impl Guard {
    /// The key a request names, or else the only seed with Bitcoin rules this caller may use,
    /// or else the only single secp256k1 key with Bitcoin rules (a seed's own Ethereum key is
    /// a single key too, so seeds come first to keep one-seed setups unambiguous).
    pub(super) fn bitcoin_key(
        &self,
        caller: &Caller,
        named: Option<&str>,
    ) -> Result<KeyId, GuardError> {
        if let Some(name) = named {
            return KeyId::new(name).map_err(|e| Rejection::invalid("key", e.to_string()).into());
        }
        let usable = |id: &KeyId| {
            caller.may_use(id) && self.policy_for(id).is_some_and(|p| p.bitcoin.is_some())
        };
        let mut candidates: Vec<KeyId> = self
            .backend
            .seeds()
            .into_iter()
            .map(|(id, _)| id)
            .filter(usable)
            .collect();
        if candidates.is_empty() {
            candidates = self
                .backend
                .keys()
                .into_iter()
                .filter(|k| k.scheme() == keyguard_chain::Scheme::Secp256k1)
                .map(|k| k.id)
                .filter(usable)
                .collect();
        }
        match candidates.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                Err(Rejection::invalid("key", "no Bitcoin key is available to this client").into())
            }
            _ => {
                Err(Rejection::invalid("key", "several Bitcoin keys: name one with \"key\"").into())
            }
        }
    }

    /// `btc_getDescriptors`: receive and internal descriptors (public only) of every account,
    /// or of one with `"account": n` (what Core's `getdescriptors --account n` asks for).
    pub fn bitcoin_descriptors(
        &self,
        caller: &Caller,
        params: &Value,
    ) -> Result<Value, GuardError> {
        // A client scoped to other methods or chains learns no xpub (an Ethereum-only client
        // gets nothing).
        if !caller.may_call("btc_getDescriptors") {
            return Err(GuardError::OutOfScope {
                rule: "access.method_not_granted",
                reason: format!(
                    "method btc_getDescriptors is not granted to client {}",
                    caller.name
                ),
            });
        }
        let key = self.bitcoin_key(caller, params.get("key").and_then(Value::as_str))?;
        if !caller.may_use(&key) {
            return Err(GuardError::Unauthorized(format!(
                "key {key} is not granted to client {}",
                caller.name
            )));
        }
        let wanted = match params.get("account") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| Rejection::invalid("account", "must be an account number"))?,
            ),
        };
        let (policy, wallet) = self.bitcoin_setup(&key)?;
        Self::check_chain(caller, &format!("bitcoin:{}", policy.network))?;
        let listed: Vec<(u32, &'static str, String, String)> = if wallet.single.is_some() {
            wallet
                .descriptors()
                .into_iter()
                .map(|(r, i)| (0, "p2wpkh", r, i))
                .collect()
        } else {
            wallet
                .accounts
                .iter()
                .zip(wallet.descriptors())
                .map(|(a, (r, i))| {
                    let kind = match a.kind {
                        keyguard_bitcoin::ScriptKind::P2wpkh => "p2wpkh",
                        keyguard_bitcoin::ScriptKind::P2tr => "p2tr",
                    };
                    (account_number(&a.path), kind, r, i)
                })
                .collect()
        };
        if let Some(n) = wanted {
            if !listed.iter().any(|(a, ..)| *a == n) {
                let known = if wallet.single.is_some() {
                    vec![0]
                } else {
                    policy.accounts.clone()
                };
                return Err(Rejection::invalid(
                    "account",
                    format!("account {n} is not registered for {key} (accounts: {known:?})"),
                )
                .into());
            }
        }
        let chosen: Vec<_> = listed
            .into_iter()
            .filter(|(a, ..)| wanted.is_none_or(|n| n == *a))
            .collect();
        Ok(json!({
            "key": key,
            "fingerprint": wallet.fingerprint.to_string(),
            "network": wallet.network.to_string(),
            "single_key": wallet.single.is_some(),
            "receive": chosen.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
            "internal": chosen.iter().map(|c| c.3.clone()).collect::<Vec<_>>(),
            "accounts": chosen
                .iter()
                .map(|(a, kind, r, i)| json!({"account": a, "type": kind, "receive": r, "internal": i}))
                .collect::<Vec<_>>(),
        }))
    }

    /// Signs every input keyguard re-derived (a seed's child keys inside the backend, or the
    /// single key itself), then pass 2.
    pub(super) async fn sign_psbt_inputs(
        &self,
        key: &KeyId,
        wallet: &Wallet,
        intent: &SpendIntent,
        finalize: bool,
    ) -> Result<SignedPsbt, GuardError> {
        let mut signatures = Vec::with_capacity(intent.jobs.len());
        for job in &intent.jobs {
            let sign_started = std::time::Instant::now();
            let sig = if wallet.single.is_some() {
                self.backend.sign(key, &job.payload).await
            } else {
                self.backend
                    .sign_derived(key, &job.path, &job.payload)
                    .await
            }
            .map_err(|e| GuardError::Backend(e.to_string()))?;
            crate::metrics::sign(self.backend.name(), sign_started.elapsed());
            signatures.push(sig);
        }
        keyguard_bitcoin::finalize(intent, &signatures, finalize).map_err(|e| super::pass2(key, e))
    }
}
