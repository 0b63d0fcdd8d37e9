//! Batched pass 2 (`bls::verify_batch`): good batches pass whole; a wrong, undecodable or
//! infinity signature is named alone; signatures moved between duties fail. Negative control:
//! with a constant batch scalar (no randomness) the moved signatures pass the batch, which is
//! what the random scalars are for.

use crate::bls::{decode_signature, verify, verify_batch, BatchItem, DST};
use blst::min_pk::{PublicKey, SecretKey, Signature};

struct Signed {
    pk: PublicKey,
    root: [u8; 32],
    sig: [u8; 96],
}

fn signed(n: usize) -> Vec<Signed> {
    (0..n)
        .map(|i| {
            let sk = SecretKey::key_gen(&[i as u8 + 1; 32], &[]).unwrap();
            let root = [i as u8; 32];
            Signed {
                pk: PublicKey::key_validate(&sk.sk_to_pk().to_bytes()).unwrap(),
                root,
                sig: sk.sign(&root, DST, &[]).to_bytes(),
            }
        })
        .collect()
}

/// As pass 2 does: signatures that do not decode fail alone, the rest are batched.
fn check(v: &[Signed], random: &mut dyn FnMut() -> u64) -> Vec<bool> {
    let decoded: Vec<Option<Signature>> = v.iter().map(|s| decode_signature(&s.sig)).collect();
    let (idx, items): (Vec<usize>, Vec<BatchItem<'_>>) = v
        .iter()
        .zip(&decoded)
        .enumerate()
        .filter_map(|(i, (s, sig))| {
            Some((
                i,
                BatchItem {
                    pk: &s.pk,
                    root: &s.root,
                    sig: sig.as_ref()?,
                },
            ))
        })
        .unzip();
    let mut out = vec![false; v.len()];
    for (i, ok) in idx.into_iter().zip(verify_batch(&items, random)) {
        out[i] = ok;
    }
    out
}

fn test_random() -> impl FnMut() -> u64 {
    let mut state = u64::from(std::process::id()) | 1;
    move || {
        // xorshift: enough for a test; keyguard's pass 2 draws from the OS.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn a_good_batch_passes_whole() {
    let v = signed(12);
    assert!(v.iter().all(|s| verify(&s.pk.to_bytes(), &s.root, &s.sig)));
    assert_eq!(check(&v, &mut test_random()), vec![true; 12]);
    assert_eq!(check(&v[..1], &mut test_random()), vec![true]);
}

#[test]
fn a_bad_signature_is_named_alone() {
    let other = signed(13).pop().unwrap();
    let mut v = signed(12);
    // A valid signature of another message by the same key would need its secret: use the
    // 13th key's signature instead (a valid G2 point that does not verify here).
    v[3].sig = other.sig;
    // Undecodable bytes and the point at infinity.
    v[5].sig = [0xff; 96];
    v[8].sig = [0; 96];
    v[8].sig[0] = 0xc0;
    let want: Vec<bool> = (0..12).map(|i| ![3, 5, 8].contains(&i)).collect();
    assert_eq!(check(&v, &mut test_random()), want);
}

fn rotated() -> Vec<Signed> {
    let mut v = signed(3);
    let first = v[0].sig;
    v[0].sig = v[1].sig;
    v[1].sig = v[2].sig;
    v[2].sig = first;
    v
}

#[test]
fn signatures_moved_between_duties_fail() {
    assert_eq!(check(&rotated(), &mut test_random()), vec![false; 3]);
}

#[test]
fn moved_signatures_negative_control_pass_with_a_constant_scalar() {
    assert_eq!(
        check(&rotated(), &mut || 1),
        vec![true; 3],
        "the test cannot see a batch without random scalars"
    );
}

/// Every validator of a slot signs the same attestation root (since Electra): the batch groups
/// them under one hash; a signature by another key among them is still named alone, and
/// signatures moved between keys of one root fail (negative control: a constant scalar lets
/// them through).
fn one_root(n: usize) -> Vec<Signed> {
    (0..n)
        .map(|i| {
            let sk = SecretKey::key_gen(&[i as u8 + 100; 32], &[]).unwrap();
            let root = [7u8; 32];
            Signed {
                pk: PublicKey::key_validate(&sk.sk_to_pk().to_bytes()).unwrap(),
                root,
                sig: sk.sign(&root, DST, &[]).to_bytes(),
            }
        })
        .collect()
}

#[test]
fn one_root_batches_pass_and_name_a_bad_signature() {
    let mut v = one_root(20);
    assert_eq!(check(&v, &mut test_random()), vec![true; 20]);
    v[11].sig = signed(1)[0].sig;
    let want: Vec<bool> = (0..20).map(|i| i != 11).collect();
    assert_eq!(check(&v, &mut test_random()), want);
    // Mixed roots: the one-root group and two others in one batch.
    let mut mixed = one_root(5);
    mixed.extend(signed(2));
    assert_eq!(check(&mixed, &mut test_random()), vec![true; 7]);
}

#[test]
fn one_root_swapped_signatures_fail_negative_control_constant_scalar() {
    // Keys 0 and 1 hold each other's signature of the same root.
    let good = one_root(4);
    let mut swapped = one_root(4);
    swapped[0].sig = good[1].sig;
    swapped[1].sig = good[0].sig;
    assert_eq!(
        check(&swapped, &mut test_random()),
        vec![false, false, true, true]
    );
    assert_eq!(
        check(&swapped, &mut || 1),
        vec![true; 4],
        "the test cannot see a batch without random scalars"
    );
}
