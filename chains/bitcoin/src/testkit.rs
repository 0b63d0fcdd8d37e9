//! Test fixtures (feature `testkit`, never in a release build of the daemon): a wallet from a
//! known seed with its private keys, PSBT construction, and a reference signer. Used by this
//! crate's tests, the daemon's integration tests and the benchmark.

use std::collections::BTreeMap;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Keypair, Message, Secp256k1};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
    XOnlyPublicKey,
};
use keyguard_chain::{Signature, SigningPayload};

use crate::wallet::{account_path, Account, ScriptKind, Wallet};
use crate::SignJob;

/// A wallet whose private keys the test holds.
pub struct TestWallet {
    /// Master private key.
    pub master: Xpriv,
    /// The public view keyguard gets.
    pub wallet: Wallet,
}

impl TestWallet {
    /// BIP84 and BIP86 account 0 of `seed` on `network`.
    pub fn new(seed: &[u8], network: Network) -> Self {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(network, seed).expect("seed length");
        let accounts = [ScriptKind::P2wpkh, ScriptKind::P2tr]
            .into_iter()
            .map(|kind| {
                let path = account_path(kind, network, 0).expect("valid path");
                let xpub =
                    Xpub::from_priv(&secp, &master.derive_priv(&secp, &path).expect("derive"));
                Account { kind, path, xpub }
            })
            .collect();
        let wallet = Wallet {
            fingerprint: master.fingerprint(&secp),
            network,
            accounts,
            max_index: 100_000,
            change_gap: 1_000,
            single: None,
        };
        TestWallet { master, wallet }
    }

    /// Path of key `chain/index` in the account of `kind`.
    pub fn path(&self, kind: ScriptKind, chain: u32, index: u32) -> DerivationPath {
        let base = account_path(kind, self.wallet.network, 0).expect("valid path");
        base.extend([
            ChildNumber::from_normal_idx(chain).expect("chain"),
            ChildNumber::from_normal_idx(index).expect("index"),
        ])
    }

    /// Public key at `chain/index`.
    pub fn public_key(
        &self,
        kind: ScriptKind,
        chain: u32,
        index: u32,
    ) -> bitcoin::secp256k1::PublicKey {
        let secp = Secp256k1::new();
        self.master
            .derive_priv(&secp, &self.path(kind, chain, index))
            .expect("derive")
            .private_key
            .public_key(&secp)
    }

    /// scriptPubKey at `chain/index`.
    pub fn script(&self, kind: ScriptKind, chain: u32, index: u32) -> ScriptBuf {
        kind.script_for(&self.public_key(kind, chain, index))
    }

    /// Signs one job as a backend would (reference signer, for tests and the raw benchmark).
    pub fn sign(&self, job: &SignJob) -> Signature {
        let secp = Secp256k1::new();
        let key = self
            .master
            .derive_priv(&secp, &job.path)
            .expect("derive")
            .private_key;
        match &job.payload {
            SigningPayload::Secp256k1Prehash(digest) => {
                let sig = secp
                    .sign_ecdsa(&Message::from_digest(*digest), &key)
                    .serialize_compact();
                let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
                r.copy_from_slice(&sig[..32]);
                s.copy_from_slice(&sig[32..]);
                Signature::Secp256k1 {
                    r,
                    s,
                    recovery_id: 0,
                }
            }
            SigningPayload::TaprootKeySpend { sighash, .. } => {
                let keypair = Keypair::from_secret_key(&secp, &key);
                let tweaked = bitcoin::key::TapTweak::tap_tweak(keypair, &secp, None);
                let sig = secp.sign_schnorr(&Message::from_digest(*sighash), &tweaked.to_keypair());
                Signature::Bip340(*sig.as_ref())
            }
            SigningPayload::Ed25519Message(_) => panic!("not a bitcoin payload"),
        }
    }
}

/// One input of a test PSBT: one of our keys (receive chain) and the amount it holds.
#[derive(Clone, Copy, Debug)]
pub struct OurInput {
    /// Script type.
    pub kind: ScriptKind,
    /// Receive index.
    pub index: u32,
    /// Amount in sat.
    pub sat: u64,
}

/// A PSBT spending `inputs` (funded by one made-up previous transaction) to `pay`, with an
/// optional change output at internal index `change.1`, all metadata filled in as a wallet
/// (Bitcoin Core's `walletcreatefundedpsbt`) would.
pub fn build_psbt(
    tw: &TestWallet,
    inputs: &[OurInput],
    pay: &[(ScriptBuf, u64)],
    change: Option<(ScriptKind, u32, u64)>,
) -> Psbt {
    let prev = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([7; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: inputs
            .iter()
            .map(|i| TxOut {
                value: Amount::from_sat(i.sat),
                script_pubkey: tw.script(i.kind, 0, i.index),
            })
            .collect(),
    };
    let txid = prev.compute_txid();
    let mut output: Vec<TxOut> = pay
        .iter()
        .map(|(s, v)| TxOut {
            value: Amount::from_sat(*v),
            script_pubkey: s.clone(),
        })
        .collect();
    if let Some((kind, index, sat)) = change {
        output.push(TxOut {
            value: Amount::from_sat(sat),
            script_pubkey: tw.script(kind, 1, index),
        });
    }
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: (0..inputs.len())
            .map(|vout| TxIn {
                previous_output: OutPoint::new(txid, vout as u32),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output,
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).expect("unsigned");
    let fp = tw.wallet.fingerprint;
    for (n, i) in inputs.iter().enumerate() {
        let input = &mut psbt.inputs[n];
        input.witness_utxo = Some(prev.output[n].clone());
        let pk = tw.public_key(i.kind, 0, i.index);
        let path = tw.path(i.kind, 0, i.index);
        match i.kind {
            ScriptKind::P2wpkh => {
                input.non_witness_utxo = Some(prev.clone());
                input.bip32_derivation = BTreeMap::from([(pk, (fp, path))]);
            }
            ScriptKind::P2tr => {
                let x = XOnlyPublicKey::from(pk);
                input.tap_internal_key = Some(x);
                input.tap_key_origins = BTreeMap::from([(x, (vec![], (fp, path)))]);
            }
        }
    }
    if let Some((kind, index, _)) = change {
        let out = psbt.outputs.last_mut().expect("change output");
        set_output_origin(out, tw, kind, 1, index);
    }
    psbt
}

/// Fills an output's key origin (what a wallet writes for its own change).
pub fn set_output_origin(
    out: &mut bitcoin::psbt::Output,
    tw: &TestWallet,
    kind: ScriptKind,
    chain: u32,
    index: u32,
) {
    let pk = tw.public_key(kind, chain, index);
    let origin = (tw.wallet.fingerprint, tw.path(kind, chain, index));
    match kind {
        ScriptKind::P2wpkh => {
            out.bip32_derivation = BTreeMap::from([(pk, origin)]);
        }
        ScriptKind::P2tr => {
            let x = XOnlyPublicKey::from(pk);
            out.tap_internal_key = Some(x);
            out.tap_key_origins = BTreeMap::from([(x, (vec![], origin))]);
        }
    }
}

/// A throwaway destination (not ours) on `network`.
pub fn foreign_script(seed_byte: u8) -> ScriptBuf {
    let secp = Secp256k1::new();
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[seed_byte.max(1); 32]).expect("key");
    ScriptKind::P2wpkh.script_for(&sk.public_key(&secp))
}

/// Base64 of a PSBT.
pub fn to_base64(psbt: &Psbt) -> String {
    crate::encode_psbt(psbt, &crate::PsbtFormat::V0).expect("encode")
}

/// The same PSBT as version 2 (BIP370) bytes.
pub fn to_v2(psbt: &Psbt) -> Vec<u8> {
    crate::v2::v0_to_v2_fresh(&psbt.serialize())
}

/// A PSBT spending outputs of the non-HD key `key` (one made-up previous transaction holding
/// `inputs`, each paying to the key's script of that kind), to `pay`, with optional change back
/// to the key's P2WPKH script; origins filled as Bitcoin Core writes them for a bare key
/// (fingerprint = HASH160 prefix, empty path).
pub fn build_single_psbt(
    key: &bitcoin::secp256k1::PublicKey,
    inputs: &[(ScriptKind, u64)],
    pay: &[(ScriptBuf, u64)],
    change: Option<u64>,
) -> Psbt {
    let wallet = Wallet::single(
        Network::Regtest,
        crate::single::SingleKey {
            public_key: *key,
            no_taproot: String::new(),
        },
    );
    let prev = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([9; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: inputs
            .iter()
            .map(|(kind, sat)| TxOut {
                value: Amount::from_sat(*sat),
                script_pubkey: kind.script_for(key),
            })
            .collect(),
    };
    let txid = prev.compute_txid();
    let mut output: Vec<TxOut> = pay
        .iter()
        .map(|(s, v)| TxOut {
            value: Amount::from_sat(*v),
            script_pubkey: s.clone(),
        })
        .collect();
    if let Some(sat) = change {
        output.push(TxOut {
            value: Amount::from_sat(sat),
            script_pubkey: ScriptKind::P2wpkh.script_for(key),
        });
    }
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: (0..inputs.len())
            .map(|vout| TxIn {
                previous_output: OutPoint::new(txid, vout as u32),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output,
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).expect("unsigned");
    let origin = (wallet.fingerprint, DerivationPath::master());
    for (n, (kind, _)) in inputs.iter().enumerate() {
        let input = &mut psbt.inputs[n];
        input.witness_utxo = Some(prev.output[n].clone());
        match kind {
            ScriptKind::P2wpkh => {
                input.non_witness_utxo = Some(prev.clone());
                input.bip32_derivation = BTreeMap::from([(*key, origin.clone())]);
            }
            ScriptKind::P2tr => {
                let x = XOnlyPublicKey::from(*key);
                input.tap_internal_key = Some(x);
                input.tap_key_origins = BTreeMap::from([(x, (vec![], origin.clone()))]);
            }
        }
    }
    psbt
}
