//! Pass 2 for eth2 duties, batched: signatures made while a batch is being verified are
//! verified together in the next one (`keyguard_eth2::bls::verify_batch`: random 64-bit
//! scalars, one final exponentiation, spread over the cores by `blst`), as the slashing
//! records of concurrent duties share one commit (`store/eth2_batch.rs`). A batch that fails
//! is checked signature by signature, so a bad one is withheld (`guard.pass2_mismatch`) and
//! the rest still go out; nothing is answered before its own check.
//!
//! Attacker's (or faulty signer's) table:
//! - a corrupted signature among good ones: the batch fails, the per-signature check names it,
//!   only it is withheld (`tests_eth2_pass2`; negative control: with the check switched off it
//!   would be released);
//! - a valid signature of another message (a faulted hash): the root is hashed again here, not
//!   taken from the signer, so it fails like any other;
//! - a signature off the curve, outside G2 or at infinity: refused when decoded, before the batch
//!   (decoded from the bytes that leave, not from the signer's point);
//! - a flood: a batch takes at most [`MAX_BATCH`] signatures; the queue holds only duties
//!   already past the rate limit and the slashing record, each waiting on its own answer;
//! - a public key that does not decode: its signatures fail (the key cache keeps only valid
//!   keys, and at most [`MAX_CACHED_KEYS`] of them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use blst::min_pk::{PublicKey, Signature};
use keyguard_eth2::bls::{decode_signature, verify_batch, BatchItem};
use rand::rngs::OsRng;
use rand::RngCore;

/// The most signatures one batch check takes.
const MAX_BATCH: usize = 256;
/// Decoded, group-checked public keys kept between batches (a key's check is ~40 µs).
const MAX_CACHED_KEYS: usize = 200_000;

struct Job {
    pk: [u8; 48],
    root: [u8; 32],
    sig: Signature,
}

type Reply = mpsc::SyncSender<bool>;

/// Handle to the pass-2 verifier thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Pass2 {
    tx: mpsc::Sender<(Job, Reply)>,
    /// Batches checked and signatures in them (for the benchmark and the batching test).
    counts: Arc<[AtomicU64; 2]>,
}

impl std::fmt::Debug for Pass2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass2").finish_non_exhaustive()
    }
}

impl Pass2 {
    /// Starts the verifier thread.
    pub(crate) fn spawn() -> Pass2 {
        Self::spawn_with(true)
    }

    /// Test-only negative control: a verifier that answers "valid" without checking.
    #[cfg(test)]
    pub(crate) fn unchecked() -> Pass2 {
        Self::spawn_with(false)
    }

    fn spawn_with(check: bool) -> Pass2 {
        let (tx, rx) = mpsc::channel::<(Job, Reply)>();
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c = counts.clone();
        std::thread::Builder::new()
            .name("eth2-pass2".into())
            .spawn(move || run(&rx, check, &c))
            .expect("spawning the eth2 pass-2 verifier");
        Pass2 { tx, counts }
    }

    /// (batches, signatures) checked so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }

    /// Whether `sig` verifies for `pk` and `root` (blocking until its batch is checked). The
    /// signature is decoded and group-checked here, on the caller's thread (the costly part
    /// that needs no batch). A stopped verifier answers false: nothing leaves unchecked.
    pub(crate) fn verify(&self, pk: &[u8; 48], root: &[u8; 32], sig: &[u8; 96]) -> bool {
        let Some(sig) = decode_signature(sig) else {
            return false;
        };
        let (reply, wait) = mpsc::sync_channel(1);
        let job = Job {
            pk: *pk,
            root: *root,
            sig,
        };
        self.tx.send((job, reply)).is_ok() && wait.recv().unwrap_or(false)
    }
}

fn run(rx: &mpsc::Receiver<(Job, Reply)>, check: bool, counts: &[AtomicU64; 2]) {
    let mut keys: HashMap<[u8; 48], PublicKey> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        counts[0].fetch_add(1, Ordering::Relaxed);
        counts[1].fetch_add(batch.len() as u64, Ordering::Relaxed);
        let verdicts = if check {
            check_batch(&mut keys, &batch)
        } else {
            vec![true; batch.len()]
        };
        for ((_, reply), ok) in batch.into_iter().zip(verdicts) {
            let _ = reply.send(ok);
        }
    }
}

fn check_batch(keys: &mut HashMap<[u8; 48], PublicKey>, batch: &[(Job, Reply)]) -> Vec<bool> {
    if keys.len() + batch.len() > MAX_CACHED_KEYS {
        keys.clear();
    }
    for (j, _) in batch {
        if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(j.pk) {
            if let Ok(pk) = PublicKey::key_validate(&j.pk) {
                e.insert(pk);
            }
        }
    }
    // Signatures by keys that do not decode fail; the others are checked together.
    let mut verdicts = vec![false; batch.len()];
    let (idx, items): (Vec<usize>, Vec<BatchItem<'_>>) = batch
        .iter()
        .enumerate()
        .filter_map(|(i, (j, _))| {
            let pk = keys.get(&j.pk)?;
            Some((
                i,
                BatchItem {
                    pk,
                    root: &j.root,
                    sig: &j.sig,
                },
            ))
        })
        .unzip();
    if items.is_empty() {
        return verdicts;
    }
    // One 64-bit scalar per signature from the OS; without randomness, each is checked alone.
    let mut seed = vec![0u8; 8 * items.len()];
    let checked = if OsRng.try_fill_bytes(&mut seed).is_ok() {
        let mut words = seed
            .chunks_exact(8)
            .map(|c| c.iter().rev().fold(0u64, |w, b| (w << 8) | u64::from(*b)));
        verify_batch(&items, &mut || words.next().unwrap_or(0))
    } else {
        items
            .iter()
            .flat_map(|i| verify_batch(std::slice::from_ref(i), &mut || 0))
            .collect()
    };
    for (i, ok) in idx.into_iter().zip(checked) {
        verdicts[i] = ok;
    }
    verdicts
}
