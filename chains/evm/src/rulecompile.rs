//! The compiled form of an Ethereum policy's rules ([`crate::rulecfg`]) and the compiler:
//! ABIs read, names resolved to addresses, amounts scaled, windows and durations parsed, once
//! at load, so every mistake is a start-up error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy_primitives::{Address, U256};

use crate::abi::Abi;
use crate::message::CompiledMessageRule;
use crate::profile::{AssetRef, Profiles};
use crate::rulecfg::{Action, CalldataMode, TimeWindow};
use crate::typed::CompiledTypedRule;
use crate::EvmPolicy;

/// Largest ABI or profile file read at load.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The longest velocity window: the daemon rebuilds this much history at start.
pub const MAX_WINDOW_MS: u64 = 31 * 86_400_000;

/// A literal from the config, pre-parsed for each ABI type it may be compared with.
#[derive(Clone, Debug)]
pub(crate) struct Literal {
    pub(crate) text: String,
    pub(crate) address: Option<Address>,
    pub(crate) uint: Option<U256>,
    pub(crate) boolean: Option<bool>,
    pub(crate) bytes: Option<Vec<u8>>,
}

impl Literal {
    fn new(text: &str, profiles: &Profiles, chains: &[u64]) -> Literal {
        Literal {
            text: text.to_string(),
            address: text
                .parse()
                .ok()
                .filter(|a| check_checksum(text, *a).is_ok()),
            uint: profiles.parse_amount(text, chains).ok(),
            boolean: text.parse().ok(),
            bytes: text.strip_prefix("0x").and_then(|h| hex::decode(h).ok()),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum ArgCheck {
    Eq(Literal),
    OneOf(Vec<Literal>),
    Max(U256),
    Min(U256),
    MaxLen(usize),
    Len(usize),
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: &'static str,
    pub(crate) deny: bool,
    pub(crate) chain_ids: Vec<u64>,
    /// `(chain or any, address)`.
    pub(crate) to: Option<Vec<(Option<u64>, Address)>>,
    pub(crate) create: bool,
    pub(crate) abi: Option<Arc<Abi>>,
    pub(crate) functions: Vec<String>,
    pub(crate) calldata_any: bool,
    /// A deny rule without `to` (or `create`) also matches contract creation.
    pub(crate) any_destination: bool,
    pub(crate) args: Vec<(String, ArgCheck)>,
    pub(crate) max_value: Option<U256>,
    pub(crate) allow_unlimited_approval: bool,
    pub(crate) window: Option<TimeWindow>,
}

#[derive(Debug)]
pub(crate) struct TokenRule {
    pub(crate) token: Vec<(u64, Address)>,
    pub(crate) max_transfer: Option<U256>,
    pub(crate) max_approval: Option<U256>,
    pub(crate) allow_unlimited_approval: bool,
    pub(crate) unlimited_at: Option<U256>,
    pub(crate) approval_window_ms: u64,
}

/// What a velocity limit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Counted {
    Transactions,
    Assets(Vec<(u64, AssetRef)>),
}

#[derive(Debug)]
pub(crate) struct Velocity {
    pub(crate) name: &'static str,
    pub(crate) counted: Counted,
    pub(crate) max: U256,
    pub(crate) window_ms: u64,
    pub(crate) per_destination: bool,
}

/// The compiled policy extensions.
#[derive(Debug)]
pub struct Compiled {
    pub(crate) profiles: Profiles,
    pub(crate) rules: Vec<Rule>,
    pub(crate) tokens: Vec<TokenRule>,
    pub(crate) velocity: Vec<Velocity>,
    pub(crate) typed: Vec<CompiledTypedRule>,
    pub(crate) messages: Vec<CompiledMessageRule>,
}

/// Rule names become `&'static str` (the type every rejection carries). Each distinct name is
/// leaked once for the life of the process, however many reloads and `config check`s load it.
pub(crate) fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A user's rule name may not shadow a built-in rule's namespace (`evm.`, `policy.`, ...):
/// a refusal named `evm.max_value` must always be the built-in cap.
fn user_name(name: &str, at: &str) -> Result<(), String> {
    keyguard_chain::rules::check_user_rule_name(name).map_err(|e| format!("{at}.name: {e}"))
}

/// Parses a window length (`"30s"`, `"15m"`, `"1h"`, `"7d"`; the shared duration syntax,
/// [`keyguard_chain::duration`]) into milliseconds; zero is refused.
pub fn parse_window(text: &str) -> Result<u64, String> {
    keyguard_chain::duration::parse_positive_duration(text).map(keyguard_chain::duration::as_ms)
}

/// A mixed-case address must carry a valid EIP-55 checksum: a wrong one is a typo, and a typo
/// in an allowlist sends funds to nobody (or to somebody).
pub(crate) fn check_checksum(text: &str, a: Address) -> Result<(), String> {
    let digits = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
        && digits.bytes().any(|b| b.is_ascii_uppercase());
    if mixed && a.to_checksum(None)[2..] != *digits {
        return Err(format!("{text} has an invalid EIP-55 checksum"));
    }
    Ok(())
}

/// Resolves destination names to `(chain, address)`: an address matches on any chain, a
/// symbol only on the chains whose profile defines it.
pub(crate) fn resolve_addresses(
    names: &[String],
    profiles: &Profiles,
    chains: &[u64],
    at: &str,
) -> Result<Vec<(Option<u64>, Address)>, String> {
    let mut out = Vec::new();
    for n in names {
        if let Ok(a) = n.parse::<Address>() {
            check_checksum(n, a).map_err(|e| format!("{at}: {e}"))?;
            out.push((None, a));
            continue;
        }
        for (chain, asset, _) in profiles
            .resolve_asset(n, chains)
            .map_err(|e| format!("{at}: {e}"))?
        {
            match asset {
                AssetRef::Token(a) => out.push((Some(chain), a)),
                AssetRef::Native => {
                    return Err(format!("{at}: {n:?} is a native asset, not an address"))
                }
            }
        }
    }
    Ok(out)
}

/// Compiles a policy's rules; files are read relative to `base`.
pub(crate) fn compile(p: &EvmPolicy, base: Option<&Path>) -> Result<Compiled, String> {
    let chain_ids: &[u64] = &p.chain_ids;
    let read = |f: &PathBuf| -> Result<String, String> {
        let path = match base {
            Some(b) if f.is_relative() => b.join(f),
            _ => f.clone(),
        };
        // Only regular files of sane size: a path to a device or a huge file is a mistake that
        // must not hang or exhaust the loader.
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{}: not a regular file of at most {MAX_FILE_BYTES} bytes",
                path.display()
            ));
        }
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut profiles = Profiles::shipped();
    for (i, f) in p.profiles.iter().enumerate() {
        profiles
            .add_toml(&f.display().to_string(), &read(f)?)
            .map_err(|e| format!("profiles[{i}]: {e}"))?;
    }
    let mut abis: BTreeMap<String, Arc<Abi>> = BTreeMap::new();
    for builtin in ["erc20", "erc721"] {
        if let Some(a) = Abi::builtin(builtin) {
            abis.insert(builtin.into(), a);
        }
    }
    for (name, path) in &p.abis {
        let abi = Abi::from_json(name, &read(path)?).map_err(|e| format!("abis.{name}: {e}"))?;
        abis.insert(name.clone(), Arc::new(abi));
    }

    let mut rules = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if let Some(types) = &p.tx_types {
        if types.is_empty() || types.iter().any(|t| *t > 4) {
            return Err(format!(
                "tx_types: {types:?} must list EIP-2718 types among 0 (legacy), 1 (2930), 2 \
                 (1559), 3 (4844), 4 (7702)"
            ));
        }
    }
    for (i, r) in p.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        user_name(&r.name, &at)?;
        if !seen.insert(r.name.as_str()) {
            return Err(format!("{at}.name: duplicate rule {:?}", r.name));
        }
        let deny = r.action == Action::Deny;
        if deny && r.max_value.is_some() {
            return Err(format!(
                "{at}.max_value: a deny rule refuses whatever value it matches; caps belong on \
                 allow rules or the policy's max_value"
            ));
        }
        if deny && r.allow_unlimited_approval {
            return Err(format!(
                "{at}.allow_unlimited_approval: only an allow rule can allow anything"
            ));
        }
        if r.create && r.to.is_some() {
            return Err(format!(
                "{at}.create: a creation has no destination; a rule with create = true cannot \
                 also list to"
            ));
        }
        let chains: Vec<u64> = if r.chain_ids.is_empty() {
            chain_ids.to_vec()
        } else {
            r.chain_ids.clone()
        };
        let abi = match &r.abi {
            Some(name) => Some(abis.get(name).cloned().ok_or_else(|| {
                format!("{at}.abi: unknown ABI {name:?} (erc20, erc721 or one of [abis])")
            })?),
            None => None,
        };
        for f in &r.functions {
            match &abi {
                Some(a) if a.has_function(f) => {}
                Some(a) => {
                    return Err(format!(
                        "{at}.functions: {f:?} is not in ABI {} ({})",
                        a.name,
                        a.function_signatures().join(", ")
                    ))
                }
                None => return Err(format!("{at}.functions: needs an abi")),
            }
        }
        if abi.is_none() && !r.args.is_empty() {
            return Err(format!("{at}.args: argument constraints need an abi"));
        }
        if abi.is_some() && r.calldata.is_some() {
            return Err(format!("{at}.calldata: not used with an abi"));
        }
        let mut args = Vec::new();
        for (name, c) in &r.args {
            let at = format!("{at}.args.{name}");
            if let Some(a) = &abi {
                if !a.has_argument(&r.functions, name) {
                    return Err(format!(
                        "{at}: no function of the rule has an argument called {name:?}"
                    ));
                }
            }
            let lit = |t: &String| Literal::new(t, &profiles, &chains);
            let amount = |t: &String| {
                profiles
                    .parse_amount(t, &chains)
                    .map_err(|e| format!("{at}: {e}"))
            };
            let before = args.len();
            if let Some(v) = &c.eq {
                args.push((name.clone(), ArgCheck::Eq(lit(v))));
            }
            if let Some(v) = &c.one_of {
                args.push((name.clone(), ArgCheck::OneOf(v.iter().map(lit).collect())));
            }
            if let Some(v) = &c.max {
                args.push((name.clone(), ArgCheck::Max(amount(v)?)));
            }
            if let Some(v) = &c.min {
                args.push((name.clone(), ArgCheck::Min(amount(v)?)));
            }
            if let Some(v) = c.max_len {
                args.push((name.clone(), ArgCheck::MaxLen(v)));
            }
            if let Some(v) = c.len {
                args.push((name.clone(), ArgCheck::Len(v)));
            }
            if args.len() == before {
                return Err(format!("{at}: constraint has no condition"));
            }
        }
        let window = (!r.days.is_empty() || r.hours.is_some() || r.utc_offset.is_some())
            .then(|| {
                TimeWindow::from_parts(r.days.clone(), r.hours.as_ref(), r.utc_offset.as_deref())
            })
            .transpose()
            .map_err(|e| format!("{at}.{e}"))?;
        let max_value = r
            .max_value
            .as_ref()
            .map(|v| profiles.parse_amount(v, &chains))
            .transpose()
            .map_err(|e| format!("{at}.max_value: {e}"))?;
        // A rule that names functions allows native value only if it says so: calldata can
        // be put on a transfer to an EOA, so an ABI rule must not widen a plain-transfer cap.
        let max_value = match (&abi, max_value, deny) {
            (Some(_), None, false) => Some(U256::ZERO),
            (_, m, _) => m,
        };
        rules.push(Rule {
            name: intern(&r.name),
            deny,
            to: r
                .to
                .as_ref()
                .map(|t| resolve_addresses(t, &profiles, &chains, &format!("{at}.to")))
                .transpose()?,
            chain_ids: r.chain_ids.clone(),
            create: r.create,
            abi,
            functions: r.functions.clone(),
            calldata_any: match r.calldata {
                Some(mode) => mode == CalldataMode::Any,
                None => deny,
            },
            any_destination: deny && r.to.is_none() && !r.create,
            args,
            max_value,
            allow_unlimited_approval: r.allow_unlimited_approval,
            window,
        });
    }

    let mut tokens = Vec::new();
    for (i, t) in p.tokens.iter().enumerate() {
        let at = format!("tokens[{i}]");
        let token = profiles
            .resolve_asset(&t.token, chain_ids)
            .map_err(|e| format!("{at}.token: {e}"))?
            .into_iter()
            .filter_map(|(c, a, _)| match a {
                AssetRef::Token(a) => Some((c, a)),
                AssetRef::Native => None,
            })
            .collect::<Vec<_>>();
        if token.is_empty() {
            return Err(format!("{at}.token: {:?} is not a token", t.token));
        }
        let amount = |v: &Option<String>, k: &str| {
            v.as_ref()
                .map(|v| profiles.parse_amount(v, chain_ids))
                .transpose()
                .map_err(|e| format!("{at}.{k}: {e}"))
        };
        tokens.push(TokenRule {
            token,
            max_transfer: amount(&t.max_transfer, "max_transfer")?,
            max_approval: amount(&t.max_approval, "max_approval")?,
            allow_unlimited_approval: t.allow_unlimited_approval,
            unlimited_at: amount(&t.unlimited_at, "unlimited_at")?,
            approval_window_ms: match &t.approval_window {
                Some(w) => parse_window(w)
                    .and_then(|ms| {
                        (ms <= MAX_WINDOW_MS)
                            .then_some(ms)
                            .ok_or_else(|| format!("{w:?} is longer than 31d"))
                    })
                    .map_err(|e| format!("{at}.approval_window: a window of at most 31d: {e}"))?,
                None => crate::accounting::DEFAULT_APPROVAL_WINDOW_MS,
            },
        });
    }

    let mut velocity = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, v) in p.velocity.iter().enumerate() {
        let at = format!("velocity[{i}]");
        user_name(&v.name, &at)?;
        if !names.insert(v.name.as_str()) {
            return Err(format!("{at}.name: duplicate limit {:?}", v.name));
        }
        let window_ms = parse_window(&v.window).map_err(|e| format!("{at}.window: {e}"))?;
        if window_ms > MAX_WINDOW_MS {
            return Err(format!(
                "{at}.window: at most 31 days (older counts are not kept)"
            ));
        }
        let (counted, max) = if v.asset.eq_ignore_ascii_case("tx") {
            let n: u64 = v
                .max
                .trim()
                .parse()
                .map_err(|_| format!("{at}.max: a transaction count, got {:?}", v.max))?;
            (Counted::Transactions, U256::from(n))
        } else {
            let assets = profiles
                .resolve_asset(&v.asset, chain_ids)
                .map_err(|e| format!("{at}.asset: {e}"))?;
            let decimals = assets[0].2;
            if assets.iter().any(|(_, _, d)| *d != decimals) {
                return Err(format!("{at}.asset: decimals differ across chains"));
            }
            let max = alloy_primitives::utils::parse_units(v.max.trim(), decimals)
                .map_err(|e| format!("{at}.max: {e}"))?;
            if max.is_negative() {
                return Err(format!("{at}.max: negative"));
            }
            (
                Counted::Assets(assets.into_iter().map(|(c, a, _)| (c, a)).collect()),
                max.get_absolute(),
            )
        };
        velocity.push(Velocity {
            name: intern(&v.name),
            counted,
            max,
            window_ms,
            per_destination: v.per_destination,
        });
    }
    let typed = p
        .typed_data
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("typed_data[{i}]");
            user_name(&r.name, &at)?;
            r.compile(&profiles, chain_ids, &at)
        })
        .collect::<Result<_, _>>()?;
    let messages = p
        .messages
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("messages[{i}]");
            user_name(&r.name, &at)?;
            r.compile(&at)
        })
        .collect::<Result<_, _>>()?;
    Ok(Compiled {
        profiles,
        rules,
        tokens,
        velocity,
        typed,
        messages,
    })
}
