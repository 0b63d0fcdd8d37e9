//! Chain profiles: chain id, name, native symbol and decimals, and the tokens keyguard knows.
//!
//! Limits are written in token units (`"1000 USDC"`) because that is how a treasury thinks;
//! the profile supplies the decimals, so a limit cannot be off by 10^12 because someone typed
//! the raw integer of the wrong token. Shipped profiles live in `chains/evm/profiles/`; a
//! policy adds its own with `profiles = ["file.toml"]`.

use std::collections::BTreeMap;

use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, U256};
use serde::Deserialize;

const SHIPPED: &[&str] = &[
    include_str!("../profiles/ethereum.toml"),
    include_str!("../profiles/optimism.toml"),
    include_str!("../profiles/sepolia.toml"),
    include_str!("../profiles/anvil.toml"),
];

/// One chain's profile file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainProfile {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Human name.
    pub name: String,
    /// Symbol of the native asset (`ETH`).
    pub native_symbol: String,
    /// Decimals of the native asset (18).
    pub decimals: u8,
    /// Known ERC-20 tokens.
    #[serde(default)]
    pub tokens: Vec<TokenInfo>,
}

/// A known ERC-20 token.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    /// Ticker (`USDC`).
    pub symbol: String,
    /// Contract address.
    pub address: Address,
    /// `decimals()` of the contract.
    pub decimals: u8,
}

/// What an asset name in a policy refers to on one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetRef {
    /// The chain's native asset.
    Native,
    /// An ERC-20 token contract.
    Token(Address),
}

/// Profiles by chain id, shipped ones first, then the policy's own (which override).
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    by_chain: BTreeMap<u64, ChainProfile>,
}

impl Profiles {
    /// The shipped profiles.
    pub fn shipped() -> Profiles {
        let mut p = Profiles::default();
        for text in SHIPPED {
            if let Ok(profile) = toml::from_str::<ChainProfile>(text) {
                p.by_chain.insert(profile.chain_id, profile);
            }
        }
        p
    }

    /// Adds (or replaces) a profile read from TOML text; tokens of an existing profile for the
    /// same chain are kept unless the new file names the same symbol.
    pub fn add_toml(&mut self, origin: &str, text: &str) -> Result<(), String> {
        let profile: ChainProfile =
            toml::from_str(text).map_err(|e| format!("profile {origin}: {e}"))?;
        match self.by_chain.get_mut(&profile.chain_id) {
            Some(existing) => {
                existing.name = profile.name;
                existing.native_symbol = profile.native_symbol;
                existing.decimals = profile.decimals;
                for t in profile.tokens {
                    existing.tokens.retain(|e| e.symbol != t.symbol);
                    existing.tokens.push(t);
                }
            }
            None => {
                self.by_chain.insert(profile.chain_id, profile);
            }
        }
        Ok(())
    }

    /// The profile of a chain.
    pub fn chain(&self, chain_id: u64) -> Option<&ChainProfile> {
        self.by_chain.get(&chain_id)
    }

    /// The known token at `address` on `chain_id`.
    pub fn token(&self, chain_id: u64, address: Address) -> Option<&TokenInfo> {
        self.chain(chain_id)?
            .tokens
            .iter()
            .find(|t| t.address == address)
    }

    /// Resolves an asset name (`ETH`, `USDC` or a token address) on each of `chains`, with its
    /// decimals. A name that means nothing on any of them is an error: a limit on an unknown
    /// asset would silently limit nothing.
    pub fn resolve_asset(
        &self,
        name: &str,
        chains: &[u64],
    ) -> Result<Vec<(u64, AssetRef, u8)>, String> {
        let mut out = Vec::new();
        let literal = name.parse::<Address>().ok();
        for &chain in chains {
            let Some(p) = self.chain(chain) else {
                if let Some(a) = literal {
                    out.push((chain, AssetRef::Token(a), 0));
                }
                continue;
            };
            if let Some(a) = literal {
                let decimals = p
                    .tokens
                    .iter()
                    .find(|t| t.address == a)
                    .map_or(0, |t| t.decimals);
                out.push((chain, AssetRef::Token(a), decimals));
            } else if p.native_symbol.eq_ignore_ascii_case(name) {
                out.push((chain, AssetRef::Native, p.decimals));
            } else if let Some(t) = p
                .tokens
                .iter()
                .find(|t| t.symbol.eq_ignore_ascii_case(name))
            {
                out.push((chain, AssetRef::Token(t.address), t.decimals));
            }
        }
        if out.is_empty() {
            return Err(format!(
                "asset {name:?} is not the native asset or a known token of chains {chains:?} \
                 (add it to a profile)"
            ));
        }
        Ok(out)
    }

    /// Parses an amount such as `"1000 USDC"`, `"1.5 ether"`, `"500 gwei"` or `"42"` (base
    /// units) into base units; the unit's decimals come from the profiles of `chains`.
    pub fn parse_amount(&self, text: &str, chains: &[u64]) -> Result<U256, String> {
        let text = text.trim();
        let (number, unit) = match text.split_once(char::is_whitespace) {
            Some((n, u)) => (n.trim(), u.trim()),
            None => (text, ""),
        };
        let decimals: u8 = match unit.to_ascii_lowercase().as_str() {
            "" | "wei" => 0,
            "gwei" => 9,
            "ether" | "eth" => 18,
            _ => {
                let found = self.resolve_asset(unit, chains)?;
                let first = found[0].2;
                if found.iter().any(|(_, _, d)| *d != first) {
                    return Err(format!(
                        "{unit} has different decimals on chains {chains:?}; write base units"
                    ));
                }
                first
            }
        };
        let parsed =
            parse_units(number, decimals).map_err(|e| format!("invalid amount {text:?}: {e}"))?;
        if parsed.is_negative() {
            return Err(format!("negative amount {text:?}"));
        }
        Ok(parsed.get_absolute())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse_and_resolve_units() {
        let p = Profiles::shipped();
        assert_eq!(p.chain(1).unwrap().tokens.len(), 4);
        assert_eq!(
            p.parse_amount("1000 USDC", &[1]).unwrap(),
            U256::from(1_000_000_000u64)
        );
        assert_eq!(
            p.parse_amount("0.5 ether", &[31337]).unwrap(),
            U256::from(5u64) * U256::from(10u64).pow(U256::from(17))
        );
        assert_eq!(p.parse_amount("7", &[1]).unwrap(), U256::from(7));
        assert!(p.parse_amount("1 USDC", &[31337]).is_err());
        assert!(p.parse_amount("-1 ETH", &[1]).is_err());
        assert_eq!(
            p.resolve_asset("ETH", &[1, 10]).unwrap().len(),
            2,
            "native on both chains"
        );
    }

    #[test]
    fn a_policy_profile_adds_tokens_to_a_shipped_chain() {
        let mut p = Profiles::shipped();
        p.add_toml(
            "t",
            r#"chain_id = 31337
               name = "anvil"
               native_symbol = "ETH"
               decimals = 18
               [[tokens]]
               symbol = "TST"
               address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
               decimals = 6"#,
        )
        .unwrap();
        assert_eq!(
            p.parse_amount("2.5 TST", &[31337]).unwrap(),
            U256::from(2_500_000u64)
        );
        assert!(p.add_toml("bad", "chain_id = 1\nfoo = 2").is_err());
    }
}
