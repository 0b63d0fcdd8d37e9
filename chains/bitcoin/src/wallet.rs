//! Our keys as the chain crate sees them: registered accounts (BIP84, BIP86) by account xpub,
//! and re-derivation of every key a PSBT claims is ours. Only public material lives here.
//!
//! Nothing in a PSBT is trusted to say what is ours: a key origin is only believed when the
//! public key re-derives from a registered account xpub *and* the script it sits under is the
//! script that key produces (taproot tweak included).

use std::sync::OnceLock;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::{self, Secp256k1, VerifyOnly};
use bitcoin::{CompressedPublicKey, Network, ScriptBuf, XOnlyPublicKey};

/// Shared verification context (creating one per request costs more than a signature check).
pub(crate) fn secp() -> &'static Secp256k1<VerifyOnly> {
    static CTX: OnceLock<Secp256k1<VerifyOnly>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::verification_only)
}

/// The spend types keyguard signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptKind {
    /// BIP84 native segwit v0 key hash (ECDSA, BIP143 sighash).
    P2wpkh,
    /// BIP86 taproot key path with no script tree (BIP340 Schnorr, BIP341 sighash).
    P2tr,
}

impl ScriptKind {
    /// The BIP43 purpose of the account type.
    pub fn purpose(self) -> u32 {
        match self {
            ScriptKind::P2wpkh => 84,
            ScriptKind::P2tr => 86,
        }
    }

    /// The script this kind builds for `key`: what a re-derived key must reproduce.
    pub fn script_for(self, key: &secp256k1::PublicKey) -> ScriptBuf {
        match self {
            ScriptKind::P2wpkh => ScriptBuf::new_p2wpkh(&CompressedPublicKey(*key).wpubkey_hash()),
            // No merkle root: a hidden script tree would let its holder spend without us.
            ScriptKind::P2tr => ScriptBuf::new_p2tr(secp(), XOnlyPublicKey::from(*key), None),
        }
    }
}

/// BIP44 coin type for a network: 0 on mainnet, 1 on every test network.
pub fn coin_type(network: Network) -> u32 {
    if network == Network::Bitcoin {
        0
    } else {
        1
    }
}

/// `m / purpose' / coin' / account'`.
pub fn account_path(kind: ScriptKind, network: Network, account: u32) -> Option<DerivationPath> {
    let h = |i| ChildNumber::from_hardened_idx(i).ok();
    Some(DerivationPath::from(vec![
        h(kind.purpose())?,
        h(coin_type(network))?,
        h(account)?,
    ]))
}

/// One registered account: its type, full path from the seed and its xpub.
#[derive(Clone, Debug)]
pub struct Account {
    /// What scripts it makes.
    pub kind: ScriptKind,
    /// Path from the master key to the account.
    pub path: DerivationPath,
    /// The account's extended public key (network-tagged).
    pub xpub: Xpub,
}

/// Where a key sits in an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPosition {
    /// Index into [`Wallet::accounts`].
    pub account: usize,
    /// 0 receive, 1 internal (change).
    pub chain: u32,
    /// Address index.
    pub index: u32,
    /// Full path from the master key.
    pub path: DerivationPath,
    /// The re-derived public key.
    pub public_key: secp256k1::PublicKey,
}

/// The keys of one seed that a policy lets keyguard sign with.
#[derive(Clone, Debug)]
pub struct Wallet {
    /// Master key fingerprint.
    pub fingerprint: Fingerprint,
    /// The network every address, xpub and coin type must belong to.
    pub network: Network,
    /// Registered accounts.
    pub accounts: Vec<Account>,
    /// Highest address index keyguard re-derives for inputs (bounds the work an attacker can
    /// make us do and the keys we sign with).
    pub max_index: u32,
    /// Highest internal-chain index that counts as change. Beyond it an output is a spend: an
    /// attacker who can choose an index far away could otherwise hide funds at an index no
    /// wallet scan ever reaches.
    pub change_gap: u32,
    /// A non-HD key instead of accounts (see [`crate::single`]).
    pub single: Option<crate::single::SingleKey>,
}

impl Wallet {
    /// Finds the key at `path` under our fingerprint, re-derived from its account xpub.
    /// `None` when the origin is not one of our accounts or the index is out of bounds.
    pub fn locate(&self, fingerprint: Fingerprint, path: &DerivationPath) -> Option<KeyPosition> {
        if fingerprint != self.fingerprint {
            return None;
        }
        let (account, acct) = self.accounts.iter().enumerate().find(|(_, a)| {
            path.len() == a.path.len() + 2 && path.as_ref().starts_with(a.path.as_ref())
        })?;
        let tail = &path.as_ref()[acct.path.len()..];
        let (ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }) =
            (tail[0], tail[1])
        else {
            return None;
        };
        if chain > 1 || index > self.max_index {
            return None;
        }
        let public_key = acct.xpub.derive_pub(secp(), &tail).ok()?.public_key;
        Some(KeyPosition {
            account,
            chain,
            index,
            path: path.clone(),
            public_key,
        })
    }

    /// Output descriptors (with checksums) for each account: `(receive, internal)`. A single
    /// key has one descriptor, `wpkh(<pubkey>)`, serving as both (its change returns to it).
    pub fn descriptors(&self) -> Vec<(String, String)> {
        if let Some(single) = &self.single {
            let d = single.descriptor();
            return vec![(d.clone(), d)];
        }
        self.accounts
            .iter()
            .map(|a| {
                let origin: String = a
                    .path
                    .into_iter()
                    .map(|c| match c {
                        ChildNumber::Hardened { index } => format!("/{index}h"),
                        ChildNumber::Normal { index } => format!("/{index}"),
                    })
                    .collect();
                let body = |chain: u32| {
                    let key = format!("[{}{origin}]{}/{chain}/*", self.fingerprint, a.xpub);
                    let desc = match a.kind {
                        ScriptKind::P2wpkh => format!("wpkh({key})"),
                        ScriptKind::P2tr => format!("tr({key})"),
                    };
                    let sum = descriptor_checksum(&desc).unwrap_or_default();
                    format!("{desc}#{sum}")
                };
                (body(0), body(1))
            })
            .collect()
    }
}

/// Bitcoin Core's descriptor checksum (`GetDescriptorChecksum`, BIP380).
pub fn descriptor_checksum(desc: &str) -> Option<String> {
    const INPUT: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHARS: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    fn polymod(c: u64, val: u64) -> u64 {
        let c0 = c >> 35;
        let mut c = ((c & 0x7ffffffff) << 5) ^ val;
        for (bit, k) in [
            0xf5dee51989u64,
            0xa9fdca3312,
            0x1bab10e32d,
            0x3706b1677a,
            0x644d626ffd,
        ]
        .iter()
        .enumerate()
        {
            if c0 & (1 << bit) != 0 {
                c ^= k;
            }
        }
        c
    }
    let (mut c, mut cls, mut clscount) = (1u64, 0u64, 0);
    for ch in desc.chars() {
        let pos = INPUT.find(ch)? as u64;
        c = polymod(c, pos & 31);
        cls = cls * 3 + (pos >> 5);
        clscount += 1;
        if clscount == 3 {
            c = polymod(c, cls);
            cls = 0;
            clscount = 0;
        }
    }
    if clscount > 0 {
        c = polymod(c, cls);
    }
    for _ in 0..8 {
        c = polymod(c, 0);
    }
    c ^= 1;
    Some(
        (0..8)
            .map(|j| CHARS[((c >> (5 * (7 - j))) & 31) as usize] as char)
            .collect(),
    )
}
