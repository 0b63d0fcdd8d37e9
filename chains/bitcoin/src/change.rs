//! Output key origins under our fingerprint (`bitcoin.fake_change`).
//!
//! A coordinator writes BIP32 derivations on outputs it says are ours. keyguard never trusts
//! that claim to classify change (only a re-derivation does), but a claim that is provably
//! false is itself an attack signal: a wallet that lies about change is trying to make a
//! payment look like our own money coming back (to an approver, a hardware wallet, a later
//! audit). Like Coldcard, keyguard refuses the whole PSBT rather than quietly counting the
//! output as a payment.
//!
//! An origin is a lie when it names our fingerprint and a path below one of our registered
//! accounts, and the key it names is not what that path derives to, or the output script is
//! not the script of that key, or the path is not receive/change, or it is change beyond
//! `change_gap`, or it is taproot change with a script tree. Paths under our fingerprint but
//! outside the registered accounts cannot be checked with account xpubs alone; they are left
//! as ordinary payments (counted against every limit).

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::psbt::Output;
use bitcoin::{ScriptBuf, XOnlyPublicKey};
use keyguard_chain::Rejection;

use crate::rules::rule;
use crate::wallet::{secp, ScriptKind, Wallet};

/// More origins naming our fingerprint on one output than a single-signature wallet writes;
/// bounds the derivations a hostile PSBT can make us do per output.
pub const MAX_OUR_ORIGINS: usize = 4;

/// The key an origin names: a full key (`bip32_derivation`) or an x-only one (taproot).
enum Named<'a> {
    Full(&'a bitcoin::secp256k1::PublicKey),
    XOnly(&'a XOnlyPublicKey, bool),
}

/// The change index of output `o` when it re-derives on our internal chain within the gap;
/// `None` for anything else that is not a lie; a `bitcoin.fake_change` refusal for a lie.
pub(crate) fn change_index(
    meta: &Output,
    spk: &ScriptBuf,
    wallet: &Wallet,
    o: usize,
) -> Result<Option<u32>, Rejection> {
    if let Some(key) = &wallet.single {
        return Ok(crate::single::change_index(spk, key));
    }
    let field = format!("outputs[{o}]");
    let lie = |reason: String| Rejection::policy(rule::FAKE_CHANGE, &field, reason);
    let origins = meta
        .bip32_derivation
        .iter()
        .map(|(pk, src)| (Named::Full(pk), src))
        .chain(
            meta.tap_key_origins
                .iter()
                .map(|(x, (leaves, src))| (Named::XOnly(x, leaves.is_empty()), src)),
        )
        .filter(|(_, (fp, _))| *fp == wallet.fingerprint);
    let mut change = None;
    for (n, (named, (fp, path))) in origins.enumerate() {
        if n >= MAX_OUR_ORIGINS {
            return Err(lie(format!(
                "more than {MAX_OUR_ORIGINS} key origins name this wallet's fingerprint"
            )));
        }
        let Some((kind, chain, index, derived)) = derive(wallet, *fp, path).map_err(&lie)? else {
            continue;
        };
        let names_derived = match named {
            Named::Full(pk) => *pk == derived,
            Named::XOnly(x, no_leaves) => *x == XOnlyPublicKey::from(derived) && no_leaves,
        };
        if !names_derived {
            return Err(lie(format!(
                "key origin {path} under this wallet's fingerprint does not re-derive to the key it names"
            )));
        }
        if kind.script_for(&derived) != *spk {
            return Err(lie(format!(
                "key origin {path} re-derives, but the output script is not that key's {kind:?} script"
            )));
        }
        if kind == ScriptKind::P2tr && meta.tap_tree.is_some() {
            return Err(lie(format!(
                "taproot output of key {path} carries a script tree (spendable without us)"
            )));
        }
        if chain == 1 {
            if index > wallet.change_gap {
                return Err(lie(format!(
                    "change index {index} is beyond change_gap {}",
                    wallet.change_gap
                )));
            }
            change = Some(index);
        }
    }
    Ok(change)
}

/// Re-derives an origin below a registered account: `(kind, chain, index, key)`; `None` when
/// the path is not below any registered account (not checkable); `Err` when it is below one
/// but cannot be an address of it.
fn derive(
    wallet: &Wallet,
    fp: Fingerprint,
    path: &DerivationPath,
) -> Result<Option<(ScriptKind, u32, u32, bitcoin::secp256k1::PublicKey)>, String> {
    debug_assert_eq!(fp, wallet.fingerprint);
    let Some(acct) = wallet
        .accounts
        .iter()
        .find(|a| path.len() > a.path.len() && path.as_ref().starts_with(a.path.as_ref()))
    else {
        return Ok(None);
    };
    let tail = &path.as_ref()[acct.path.len()..];
    let [ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] = tail else {
        return Err(format!(
            "key origin {path} is below a registered account but is not <account>/<chain>/<index>"
        ));
    };
    if *chain > 1 {
        return Err(format!(
            "key origin {path}: chain {chain} is neither receive (0) nor change (1)"
        ));
    }
    let key = acct
        .xpub
        .derive_pub(secp(), &tail)
        .map_err(|e| format!("key origin {path}: {e}"))?
        .public_key;
    Ok(Some((acct.kind, *chain, *index, key)))
}
