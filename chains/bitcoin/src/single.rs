//! Non-HD keys: one secp256k1 key (typically held in an HSM) spending and receiving with the
//! descriptor `wpkh(<pubkey>)`.
//!
//! Why a separate path: an HSM key has no chain code, so nothing can be re-derived; instead an
//! input is ours exactly when its proven scriptPubKey is the P2WPKH script of that key (the
//! strongest proof there is, independent of any origin the PSBT claims). Taproot is refused by
//! name: a key-path spend needs BIP340 Schnorr with a tweaked key, and PKCS#11 offers neither.
//! An output paying back to the key's own script is change: the coins stay under the same
//! non-extractable key, and there is no other address the wallet could use for change.

use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Network, ScriptBuf, TxOut, XOnlyPublicKey};
use keyguard_chain::Rejection;

use crate::rules::rule;
use crate::wallet::{descriptor_checksum, KeyPosition, ScriptKind, Wallet};

/// One non-HD key a wallet signs with.
#[derive(Clone, Debug)]
pub struct SingleKey {
    /// The key (compressed in every script).
    pub public_key: PublicKey,
    /// Why taproot inputs of this key are refused, shown in the refusal (names the backend).
    pub no_taproot: String,
}

impl SingleKey {
    /// `wpkh(<compressed pubkey hex>)#checksum`.
    pub fn descriptor(&self) -> String {
        let body = format!("wpkh({})", self.public_key);
        let sum = descriptor_checksum(&body).unwrap_or_default();
        format!("{body}#{sum}")
    }

    /// The only script this key signs for.
    pub fn script(&self) -> ScriptBuf {
        ScriptKind::P2wpkh.script_for(&self.public_key)
    }
}

impl Wallet {
    /// The wallet of one non-HD key. Its fingerprint is the first four bytes of HASH160 of the
    /// key, as Bitcoin Core reports the origin of a bare key in a descriptor.
    pub fn single(network: Network, key: SingleKey) -> Wallet {
        let hash = bitcoin::hashes::hash160::Hash::hash(&key.public_key.serialize());
        let mut fp = [0u8; 4];
        fp.copy_from_slice(&hash.as_byte_array()[..4]);
        Wallet {
            fingerprint: Fingerprint::from(fp),
            network,
            accounts: Vec::new(),
            max_index: 0,
            change_gap: 0,
            single: Some(key),
        }
    }
}

/// Whether input `i` (spending `prev`) is the single key's: yes when its script is the key's
/// P2WPKH script; refused when it claims the key under any other script.
pub(crate) fn input_owner(
    psbt: &Psbt,
    i: usize,
    prev: &TxOut,
    key: &SingleKey,
) -> Result<Option<(ScriptKind, KeyPosition)>, Rejection> {
    let input = &psbt.inputs[i];
    let field = format!("inputs[{i}]");
    let spk = &prev.script_pubkey;
    if *spk == key.script() {
        if input.redeem_script.is_some() || input.witness_script.is_some() {
            return Err(Rejection::policy(
                rule::SCRIPT_TYPE,
                field,
                "p2wpkh input with a redeem or witness script",
            ));
        }
        return Ok(Some((
            ScriptKind::P2wpkh,
            KeyPosition {
                account: 0,
                chain: 0,
                index: 0,
                path: DerivationPath::master(),
                public_key: key.public_key,
            },
        )));
    }
    let xonly = XOnlyPublicKey::from(key.public_key);
    let taproot_of_ours = *spk == ScriptKind::P2tr.script_for(&key.public_key)
        || input.tap_internal_key == Some(xonly)
        || input.tap_key_origins.contains_key(&xonly);
    if spk.is_p2tr() && taproot_of_ours {
        return Err(Rejection::policy(
            rule::SCRIPT_TYPE,
            field,
            format!(
                "p2tr input of a non-HD key: {}; this key signs p2wpkh only",
                key.no_taproot
            ),
        ));
    }
    if input.bip32_derivation.contains_key(&key.public_key) {
        return Err(Rejection::policy(
            rule::KEY_DERIVATION,
            field,
            "names our key but the spent script is not its p2wpkh script",
        ));
    }
    Ok(None)
}

/// Change of a single key: an output to its own script.
pub(crate) fn change_index(spk: &ScriptBuf, key: &SingleKey) -> Option<u32> {
    (*spk == key.script()).then_some(0)
}
