//! SSZ `hash_tree_root` for the few fixed containers a validator signs.
//!
//! Why hand-written: keyguard hashes about fifteen small containers whose layout the consensus
//! spec fixes; sigp's `tree_hash`/`ethereum_ssz` bring derive macros, `ethereum_types` and their
//! own hashing crate for that. The merkleizer below is the spec's `merkleize` with a limit (zero
//! subtrees from a table, so a 131,072-bit Electra bitlist costs 9 levels, not 512 hashes of
//! padding), and every container is checked against an independent implementation
//! (`remerkleable` in `tests/interop/test_eth2.py`) and known domains.

use sha2::{Digest, Sha256};

/// One 32-byte chunk.
pub type Chunk = [u8; 32];

/// `hash(a ++ b)`.
pub fn hash2(a: &Chunk, b: &Chunk) -> Chunk {
    let mut h = Sha256::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// Roots of all-zero subtrees by depth (`ZERO[0]` is the zero chunk).
fn zero_hashes() -> &'static [Chunk; 41] {
    use std::sync::OnceLock;
    static Z: OnceLock<[Chunk; 41]> = OnceLock::new();
    Z.get_or_init(|| {
        let mut z = [[0u8; 32]; 41];
        for i in 1..41 {
            z[i] = hash2(&z[i - 1], &z[i - 1]);
        }
        z
    })
}

/// The spec's `merkleize(chunks, limit)`: pads to the next power of two of `limit` (or of the
/// chunk count when `limit` is `None`) with zero subtrees.
pub fn merkleize(chunks: &[Chunk], limit: Option<usize>) -> Chunk {
    let count = limit.unwrap_or(chunks.len()).max(chunks.len());
    let width = count.max(1).next_power_of_two();
    let depth = width.trailing_zeros() as usize;
    let zero = zero_hashes();
    if chunks.is_empty() {
        return zero[depth];
    }
    let mut layer: Vec<Chunk> = chunks.to_vec();
    for z in &zero[..depth] {
        if layer.len() % 2 == 1 {
            layer.push(*z);
        }
        layer = layer.chunks(2).map(|p| hash2(&p[0], &p[1])).collect();
    }
    layer[0]
}

/// `mix_in_length(root, length)`.
pub fn mix_in_length(root: &Chunk, len: usize) -> Chunk {
    hash2(root, &uint64(len as u64))
}

/// The root of a `uint64` (little-endian, zero-padded).
pub fn uint64(v: u64) -> Chunk {
    let mut c = [0u8; 32];
    c[..8].copy_from_slice(&v.to_le_bytes());
    c
}

/// The root of fixed bytes of at most 32 (`Bytes4`, `Bytes20`, `Bytes32`): right-padded.
pub fn small_bytes(b: &[u8]) -> Chunk {
    debug_assert!(b.len() <= 32);
    let mut c = [0u8; 32];
    c[..b.len()].copy_from_slice(b);
    c
}

/// The root of fixed bytes longer than 32 (`Bytes48`, `Bytes96`): packed and merkleized.
pub fn long_bytes(b: &[u8]) -> Chunk {
    let chunks: Vec<Chunk> = b.chunks(32).map(small_bytes).collect();
    merkleize(&chunks, None)
}

/// The root of a container from its field roots.
pub fn container(fields: &[Chunk]) -> Chunk {
    merkleize(fields, None)
}

/// The root of a `Bitvector[N]` given as its `ceil(N/8)` bytes.
pub fn bitvector(bytes: &[u8], n_bits: usize) -> Chunk {
    let chunks: Vec<Chunk> = bytes.chunks(32).map(small_bytes).collect();
    merkleize(&chunks, Some(n_bits.div_ceil(256)))
}

/// A decoded `Bitlist[N]`: the bits without the delimiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitlist {
    /// Bit bytes, little-endian bit order, delimiter removed.
    pub bytes: Vec<u8>,
    /// Number of bits.
    pub len: usize,
}

/// Why bytes are not a valid `Bitlist[N]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitlistError {
    /// No bytes, or a last byte of zero: the delimiter bit is missing.
    #[error("missing the delimiter bit")]
    NoDelimiter,
    /// More bits than the list's limit.
    #[error("{0} bits exceed the limit of {1}")]
    TooLong(usize, usize),
}

impl Bitlist {
    /// Parses SSZ bitlist bytes (delimiter bit set after the last bit) with limit `n`.
    pub fn from_ssz(raw: &[u8], n: usize) -> Result<Bitlist, BitlistError> {
        let last = *raw.last().ok_or(BitlistError::NoDelimiter)?;
        if last == 0 {
            return Err(BitlistError::NoDelimiter);
        }
        let high = 7 - last.leading_zeros() as usize;
        let len = (raw.len() - 1) * 8 + high;
        if len > n {
            return Err(BitlistError::TooLong(len, n));
        }
        let mut bytes = raw.to_vec();
        let last_i = bytes.len() - 1;
        bytes[last_i] &= !(1u8 << high);
        bytes.truncate(len.div_ceil(8));
        Ok(Bitlist { bytes, len })
    }

    /// `hash_tree_root` of this list as a `Bitlist[n]`.
    pub fn root(&self, n: usize) -> Chunk {
        let chunks: Vec<Chunk> = self.bytes.chunks(32).map(small_bytes).collect();
        mix_in_length(&merkleize(&chunks, Some(n.div_ceil(256))), self.len)
    }
}
