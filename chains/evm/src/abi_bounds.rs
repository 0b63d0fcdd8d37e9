//! A dry run of ABI decoding that counts the values a decode would build, before the library
//! builds them.
//!
//! The attack stopped: in the ABI encoding, the heads of a dynamic array are offsets, and
//! nothing stops every offset of an outer `uint256[][]` pointing at the same inner array. With
//! `n` offsets and one `n`-element tail, `64 n` bytes of calldata decode to `n^2` values (64 KiB
//! to a million values, 128 KiB to a gigabyte), all allocated before the canonical re-encoding
//! check refuses the input. A canonical encoding spends at least one 32-byte word per value,
//! so a decode needing more values than `words + slack` cannot be canonical and is refused
//! without being built. The walk is iterative over data and recursive only over the
//! configured (trusted, finite) ABI types.

use alloy_dyn_abi::DynSolType;

/// Values allowed beyond one per 32-byte word (the top-level parameters, empty arrays).
const SLACK: usize = 256;

/// Why the dry run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overrun {
    /// More values than any canonical encoding of this many bytes holds.
    TooManyValues { limit: usize },
    /// An offset or length points outside the data (the decoder refuses it as well).
    OutOfBounds,
}

struct Walk<'a> {
    data: &'a [u8],
    budget: usize,
    limit: usize,
}

impl Walk<'_> {
    fn spend(&mut self, n: usize) -> Result<(), Overrun> {
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or(Overrun::TooManyValues { limit: self.limit })?;
        Ok(())
    }

    fn word(&self, at: usize) -> Result<usize, Overrun> {
        let w = self
            .data
            .get(at..at.checked_add(32).ok_or(Overrun::OutOfBounds)?)
            .ok_or(Overrun::OutOfBounds)?;
        if w[..24].iter().any(|b| *b != 0) {
            return Err(Overrun::OutOfBounds);
        }
        Ok(u64::from_be_bytes(w[24..].try_into().expect("8 bytes")) as usize)
    }

    /// Counts the values of `tys` laid out as a tuple whose head starts at `base`.
    fn tuple(&mut self, tys: &[&DynSolType], base: usize) -> Result<(), Overrun> {
        let mut head = base;
        for ty in tys {
            match ty.is_dynamic() {
                true => {
                    let offset = self.word(head)?;
                    let at = base.checked_add(offset).ok_or(Overrun::OutOfBounds)?;
                    self.value(ty, at)?;
                    head += 32;
                }
                false => {
                    self.value(ty, head)?;
                    head = head
                        .checked_add(ty.minimum_words() * 32)
                        .ok_or(Overrun::OutOfBounds)?;
                }
            }
        }
        Ok(())
    }

    /// Counts the values of one `ty` whose encoding starts at `at`.
    /// Tuples and fixed arrays are not counted themselves: their elements take the words.
    fn value(&mut self, ty: &DynSolType, at: usize) -> Result<(), Overrun> {
        if !matches!(
            ty,
            DynSolType::Tuple(_) | DynSolType::CustomStruct { .. } | DynSolType::FixedArray(..)
        ) {
            self.spend(1)?;
        }
        match ty {
            DynSolType::Array(inner) => {
                let len = self.word(at)?;
                // Each element takes at least one word of head: a longer claim is malformed.
                if len > self.data.len() / 32 {
                    return Err(Overrun::OutOfBounds);
                }
                let tys = vec![inner.as_ref(); len];
                self.tuple(&tys, at + 32)
            }
            DynSolType::FixedArray(inner, n) => {
                let tys = vec![inner.as_ref(); *n];
                self.tuple(&tys, at)
            }
            DynSolType::Tuple(items) | DynSolType::CustomStruct { tuple: items, .. } => {
                let tys: Vec<&DynSolType> = items.iter().collect();
                self.tuple(&tys, at)
            }
            DynSolType::Bytes | DynSolType::String => {
                let len = self.word(at)?;
                if len > self.data.len() {
                    return Err(Overrun::OutOfBounds);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Checks that decoding `data` (arguments, selector removed) as `tys` builds no more values
/// than a canonical encoding of its length could hold.
pub fn check(tys: &[DynSolType], data: &[u8]) -> Result<(), Overrun> {
    let limit = data.len() / 32 + SLACK;
    let mut walk = Walk {
        data,
        budget: limit,
        limit,
    };
    let refs: Vec<&DynSolType> = tys.iter().collect();
    walk.tuple(&refs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_dyn_abi::DynSolValue;
    use alloy_primitives::U256;

    fn word(n: usize) -> [u8; 32] {
        U256::from(n).to_be_bytes()
    }

    /// `uint256[][]` whose `n` inner offsets all point at one `n`-element array.
    fn reused_offsets(n: usize) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend(word(32)); // offset of the outer array
        d.extend(word(n)); // outer length
        for _ in 0..n {
            d.extend(word(n * 32)); // every element: the same tail right after the heads
        }
        d.extend(word(n)); // inner length
        for i in 0..n {
            d.extend(word(i));
        }
        d
    }

    #[test]
    fn offset_reuse_is_refused_before_decoding() {
        let ty = DynSolType::Array(Box::new(DynSolType::Array(Box::new(DynSolType::Uint(256)))));
        let data = reused_offsets(2_000);
        assert!(matches!(
            check(std::slice::from_ref(&ty), &data),
            Err(Overrun::TooManyValues { .. })
        ));
        // Control: the canonical encoding of a large nested array passes the dry run.
        let inner = DynSolValue::Array(
            (0..40)
                .map(|i| DynSolValue::Uint(U256::from(i), 256))
                .collect(),
        );
        let value = DynSolValue::Array(vec![inner; 40]);
        let canonical = DynSolValue::Tuple(vec![value]).abi_encode_params();
        assert_eq!(check(std::slice::from_ref(&ty), &canonical), Ok(()));
        assert!(ty.abi_decode_sequence(&canonical).is_ok());
    }
}
