//! The one registry of built-in rule names: every refusal, audit row, metric label, dry-run
//! trace and the docs table (`docs/rules.md`, checked by a test) use these names.
//!
//! Why one list: an operator who greps the audit log for the rule a dry run named, or alerts
//! on a metric label the docs promise, must find it. A name typed twice drifts. User-defined
//! rule names (EVM allow/deny, typed-data and message rules, velocity limits) may not start
//! with a [`RESERVED_NAMESPACES`] prefix, so a refusal named `evm.max_value` is always the
//! built-in cap, never a user's rule dressed up as one.

/// Prefixes only built-in rules may use (checked at config load for user rule names).
pub const RESERVED_NAMESPACES: &[&str] = &[
    "evm.",
    "bitcoin.",
    "cometbft.",
    "eth2.",
    "approval.",
    "policy.",
    "admin.",
    "access.",
    "rate_limit.",
    "request.",
    "guard.",
    "audit.",
    "store.",
    "kill_switch",
];

/// Names of the EVM rules, as constants so the engine cannot misspell them.
pub mod evm {
    #![allow(missing_docs)]
    pub const CHAIN_ID: &str = "evm.chain_id";
    pub const TX_TYPE: &str = "evm.tx_type";
    pub const CONTRACT_CREATION: &str = "evm.contract_creation";
    pub const TO_ALLOWLIST: &str = "evm.to_allowlist";
    pub const MAX_VALUE: &str = "evm.max_value";
    pub const MAX_FEE_PER_GAS: &str = "evm.max_fee_per_gas";
    pub const MAX_PRIORITY_FEE_PER_GAS: &str = "evm.max_priority_fee_per_gas";
    pub const MAX_FEE_PER_BLOB_GAS: &str = "evm.max_fee_per_blob_gas";
    pub const DELEGATION: &str = "evm.delegation";
    pub const MAX_GAS: &str = "evm.max_gas";
    pub const MAX_CALLDATA_BYTES: &str = "evm.max_calldata_bytes";
    pub const MAX_BLOBS: &str = "evm.max_blobs";
    pub const TIME_WINDOW: &str = "evm.time_window";
    pub const NO_RULE: &str = "evm.no_rule";
    pub const TOKEN_MAX_TRANSFER: &str = "evm.token_max_transfer";
    pub const TOKEN_MAX_APPROVAL: &str = "evm.token_max_approval";
    pub const UNLIMITED_APPROVAL: &str = "evm.unlimited_approval";
    pub const MOVEMENT_UNDECODABLE: &str = "evm.movement_undecodable";
    pub const TYPED_DATA_UNRECOGNISED: &str = "evm.typed_data_unrecognised";
    pub const APPROVAL_UNCONFIGURED: &str = "evm.approval_unconfigured";
    pub const ALLOWANCE_WINDOW: &str = "evm.allowance_window";
    pub const VELOCITY: &str = "evm.velocity";
    pub const NONCE_REUSE: &str = "evm.nonce_reuse";
    pub const REQUIRE_APPROVAL: &str = "evm.require_approval";
    pub const TYPED_DATA: &str = "evm.typed_data";
    pub const TYPED_DATA_CHAIN_ID: &str = "evm.typed_data_chain_id";
    pub const MESSAGE: &str = "evm.message";
}

/// Names of the Ethereum consensus-layer (eth2 remote signing) rules.
pub mod eth2 {
    #![allow(missing_docs)]
    pub const NETWORK: &str = "eth2.network";
    pub const FORK: &str = "eth2.fork";
    pub const BLOCK_FORMAT: &str = "eth2.block_format";
    pub const SIGNING_ROOT: &str = "eth2.signing_root";
    pub const PUBKEY_MISMATCH: &str = "eth2.pubkey_mismatch";
    pub const UNKNOWN_KEY: &str = "eth2.unknown_key";
    pub const KEY_BACKEND: &str = "eth2.key_backend";
    pub const DOUBLE_PROPOSAL: &str = "eth2.double_proposal";
    pub const DOUBLE_VOTE: &str = "eth2.double_vote";
    pub const SURROUND_VOTE: &str = "eth2.surround_vote";
    pub const SOURCE_AFTER_TARGET: &str = "eth2.source_after_target";
    pub const BELOW_WATERMARK: &str = "eth2.below_watermark";
    pub const NOT_INCREASING: &str = "eth2.not_increasing";
    pub const CLOCK_WINDOW: &str = "eth2.clock_window";
    pub const PROPOSER_INDEX: &str = "eth2.proposer_index";
    pub const FEE_RECIPIENT: &str = "eth2.fee_recipient";
    pub const GAS_LIMIT: &str = "eth2.gas_limit";
    pub const VOLUNTARY_EXIT: &str = "eth2.voluntary_exit";
    pub const DEPOSIT: &str = "eth2.deposit";
    pub const DUTY_DISABLED: &str = "eth2.duty_disabled";
    pub const RATE_LIMIT: &str = "eth2.rate_limit";
    pub const STORE_UNAVAILABLE: &str = "eth2.store_unavailable";
    pub const BLOCK_PROOF: &str = "eth2.block_proof";
    pub const BLOCK_PROOF_REQUIRED: &str = "eth2.block_proof_required";
    pub const BLOCK_FEE_RECIPIENT: &str = "eth2.block_fee_recipient";
    pub const GRAFFITI: &str = "eth2.graffiti";
}

/// Names shared by every chain.
pub mod common {
    #![allow(missing_docs)]
    pub const POLICY_NONE: &str = "policy.none";
    pub const POLICY_CONFIG: &str = "policy.config";
    pub const POLICY_LIMITS: &str = "policy.limits";
    pub const REQUEST_INVALID: &str = "request.invalid";
    pub const KILL_SWITCH: &str = "admin.kill_switch";
    pub const KILL_SWITCH_EMERGENCY: &str = "admin.kill_switch.emergency";
}

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Ethereum JSON-RPC signing.
    Evm,
    /// Bitcoin PSBT signing.
    Bitcoin,
    /// CometBFT privval signing.
    Cometbft,
    /// Ethereum consensus-layer (eth2) remote signing.
    Eth2,
    /// Every chain (access, approvals, policy selection, kill switch).
    Any,
    /// The admin socket.
    Admin,
}

impl Scope {
    /// The word the docs table uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Evm => "evm",
            Scope::Bitcoin => "bitcoin",
            Scope::Cometbft => "cometbft",
            Scope::Eth2 => "eth2",
            Scope::Any => "any",
            Scope::Admin => "admin",
        }
    }
}

/// One built-in rule.
#[derive(Clone, Copy, Debug)]
pub struct RuleInfo {
    /// Stable name (errors, audit `rule`, `keyguard_rejections_total{rule}`, traces).
    pub name: &'static str,
    /// Where it applies.
    pub scope: Scope,
    /// The error a refusal by this rule carries, in the protocol's own convention.
    pub code: &'static str,
    /// The attack or mistake it stops.
    pub stops: &'static str,
}

const P: &str = "-32001";
const INVALID: &str = "-32602";
const UNAUTH: &str = "-32005";
const PRIVVAL_POLICY: &str = "privval 1";
const PRIVVAL_DENIED: &str = "privval 3";
const ADMIN_REFUSED: &str = "admin -32010";
const HTTP400: &str = "HTTP 400";
const HTTP403: &str = "HTTP 403";
const HTTP404: &str = "HTTP 404";
const HTTP412: &str = "HTTP 412";
const HTTP429: &str = "HTTP 429";

const fn r(name: &'static str, scope: Scope, code: &'static str, stops: &'static str) -> RuleInfo {
    RuleInfo {
        name,
        scope,
        code,
        stops,
    }
}

/// Every built-in rule, in the order the docs list them.
pub const BUILTIN: &[RuleInfo] = &[
    // --- Ethereum: fixed limits ---
    r(evm::CHAIN_ID, Scope::Evm, P, "replaying the key's authority on a chain it was not meant for"),
    r(evm::TX_TYPE, Scope::Evm, P, "transaction types the policy's `tx_types` does not list (e.g. legacy/2930 fee semantics)"),
    r(evm::CONTRACT_CREATION, Scope::Evm, P, "deploying arbitrary code from a key meant for transfers"),
    r(evm::TO_ALLOWLIST, Scope::Evm, P, "sending to an address outside the policy's `to` list"),
    r(evm::MAX_VALUE, Scope::Evm, P, "draining the account in one transaction"),
    r(evm::MAX_FEE_PER_GAS, Scope::Evm, P, "burning the balance in fees (`gasPrice` or `maxFeePerGas`)"),
    r(evm::MAX_PRIORITY_FEE_PER_GAS, Scope::Evm, P, "paying a colluding builder through tips (`maxPriorityFeePerGas`, and the whole `gasPrice` of legacy/2930)"),
    r(evm::MAX_FEE_PER_BLOB_GAS, Scope::Evm, P, "burning the balance in blob fees"),
    r(evm::DELEGATION, Scope::Evm, P, "EIP-7702: handing the account's code to an unknown contract"),
    r(evm::MAX_GAS, Scope::Evm, P, "burning the balance through an absurd gas limit"),
    r(evm::MAX_CALLDATA_BYTES, Scope::Evm, P, "oversized payloads from a key that posts small data"),
    r(evm::MAX_BLOBS, Scope::Evm, P, "blob fees from a key that should post few or no blobs"),
    r(evm::TIME_WINDOW, Scope::Evm, P, "a stolen credential used outside the operators' hours"),
    // --- Ethereum: rule engine ---
    r(evm::NO_RULE, Scope::Evm, P, "anything no allow rule covers (deny by default)"),
    r(evm::TOKEN_MAX_TRANSFER, Scope::Evm, P, "draining a token in one transfer"),
    r(evm::TOKEN_MAX_APPROVAL, Scope::Evm, P, "granting a spender more than the token's approval limit"),
    r(evm::UNLIMITED_APPROVAL, Scope::Evm, P, "approve-then-drain: unlimited approvals and permits"),
    r(evm::MOVEMENT_UNDECODABLE, Scope::Evm, P, "token movements hidden from the limits: calldata with a movement selector that is not its exact encoding"),
    r(evm::TYPED_DATA_UNRECOGNISED, Scope::Evm, P, "permits keyguard cannot read, under a rule that constrains spenders, tokens or amounts"),
    r(evm::APPROVAL_UNCONFIGURED, Scope::Evm, P, "approvals of a token with no configured approval limit and no rule allowing them"),
    r(evm::ALLOWANCE_WINDOW, Scope::Evm, P, "many small approvals to one spender adding up past the token's approval limit"),
    r(evm::VELOCITY, Scope::Evm, P, "slow draining through many transactions under the per-tx limit"),
    r(evm::NONCE_REUSE, Scope::Evm, P, "a second, different transaction for a nonce already signed"),
    r(evm::REQUIRE_APPROVAL, Scope::Evm, "-32002", "large transfers without M-of-N human approval"),
    r(evm::TYPED_DATA, Scope::Evm, P, "blind EIP-712 signatures (permits, orders) no rule allows"),
    r(evm::TYPED_DATA_CHAIN_ID, Scope::Evm, P, "typed data replayable on another chain"),
    r(evm::MESSAGE, Scope::Evm, P, "chosen plaintext: a hash or text no message rule allows"),
    // --- Bitcoin ---
    r("bitcoin.network", Scope::Bitcoin, P, "xpubs, addresses or coin types of another network"),
    r("bitcoin.input_amount_proof", Scope::Bitcoin, P, "the BIP143 fee attack: input amounts without proof"),
    r("bitcoin.key_derivation", Scope::Bitcoin, P, "a key origin that does not re-derive to the input's script"),
    r("bitcoin.script_type", Scope::Bitcoin, P, "script paths, legacy/p2sh inputs, disabled types"),
    r("bitcoin.foreign_input", Scope::Bitcoin, P, "inputs keyguard does not sign, unless allowed"),
    r("bitcoin.sighash_type", Scope::Bitcoin, P, "anything but SIGHASH_ALL / DEFAULT"),
    r("bitcoin.destination_allowlist", Scope::Bitcoin, P, "outputs to scripts outside the allowlist"),
    r("bitcoin.max_spend_per_tx", Scope::Bitcoin, P, "draining in one transaction"),
    r("bitcoin.max_spend_per_window", Scope::Bitcoin, P, "draining through many transactions"),
    r("bitcoin.op_return", Scope::Bitcoin, P, "data outputs beyond the limit"),
    r("bitcoin.dust", Scope::Bitcoin, P, "outputs below the dust threshold"),
    r("bitcoin.fee_positive", Scope::Bitcoin, P, "outputs worth more than the inputs"),
    r("bitcoin.max_fee", Scope::Bitcoin, P, "burning funds in fees (absolute)"),
    r("bitcoin.max_feerate", Scope::Bitcoin, P, "burning funds in fees (per vbyte)"),
    r("bitcoin.max_fee_percent", Scope::Bitcoin, P, "burning funds in fees (share of the spend)"),
    r("bitcoin.tx_version", Scope::Bitcoin, P, "non-standard transaction versions"),
    r("bitcoin.locktime", Scope::Bitcoin, P, "funds frozen by a far-future locktime"),
    r("bitcoin.locktime_freeze", Scope::Bitcoin, P, "a locktimed self-transfer that freezes coins in the conflict guard"),
    r("bitcoin.fake_change", Scope::Bitcoin, P, "an output claiming our derivation that is not our change"),
    r("bitcoin.duplicate_input", Scope::Bitcoin, P, "one outpoint spent twice in a PSBT (counted twice)"),
    r("bitcoin.sequence", Scope::Bitcoin, P, "relative timelocks (BIP68) that freeze the coins"),
    r("bitcoin.rbf", Scope::Bitcoin, P, "replaceability against the operator's setting"),
    r("bitcoin.node_utxo_spent", Scope::Bitcoin, P, "inputs a node says are already spent"),
    r("bitcoin.node_utxo_mismatch", Scope::Bitcoin, P, "input amounts or scripts the chain contradicts"),
    r("bitcoin.conflicting_spend", Scope::Bitcoin, P, "signing an outpoint again in another transaction"),
    r("bitcoin.time_window", Scope::Bitcoin, P, "signing outside the operators' days and hours"),
    r("bitcoin.require_approval", Scope::Bitcoin, "-32002", "large spends without M-of-N human approval"),
    // --- Bitcoin signet blocks (BIP325) ---
    r("bitcoin.signet.block", Scope::Bitcoin, P, "blocks Core would reject or read differently: no coinbase or witness commitment, wrong merkle root, a solution already present"),
    r("bitcoin.signet.commitment", Scope::Bitcoin, P, "a PSBT whose to_spend/spend commit to another block than the one it carries"),
    r("bitcoin.signet.challenge", Scope::Bitcoin, P, "signing for a foreign signet (another challenge) or with a key outside the challenge"),
    r("bitcoin.signet.prev_block", Scope::Bitcoin, P, "a block not on keyguard's own chain: unknown previous block, a fork beside its tip"),
    r("bitcoin.signet.height", Scope::Bitcoin, P, "a second block at a signed height, or a fork below the tip (beyond the reorg depth)"),
    r("bitcoin.signet.height_gap", Scope::Bitcoin, P, "a height far above the tip that would lock out the real next block"),
    r("bitcoin.signet.timestamp_future", Scope::Bitcoin, P, "block times far ahead of keyguard's clock"),
    r("bitcoin.signet.timestamp_past", Scope::Bitcoin, P, "block times not above the median time past (invalid blocks that burn a height)"),
    r("bitcoin.signet.reward", Scope::Bitcoin, P, "coinbases paying more than subsidy plus (capped) fees"),
    r("bitcoin.signet.payout", Scope::Bitcoin, P, "coinbase outputs to scripts outside the payout list"),
    r("bitcoin.signet.version", Scope::Bitcoin, P, "block versions with bits outside the allowlist"),
    r("bitcoin.signet.max_transactions", Scope::Bitcoin, P, "blocks with more transactions than allowed"),
    r("bitcoin.signet.max_weight", Scope::Bitcoin, P, "blocks heavier than allowed"),
    r("bitcoin.signet.tx_allowlist", Scope::Bitcoin, P, "transactions not spending from the allowed scripts (e.g. only the faucet's)"),
    // --- CometBFT ---
    r("cometbft.chain_id", Scope::Cometbft, PRIVVAL_POLICY, "signing for another chain"),
    r("cometbft.pol_round", Scope::Cometbft, PRIVVAL_POLICY, "a proposal whose POL round is not below its round"),
    r("cometbft.max_height", Scope::Cometbft, PRIVVAL_POLICY, "signing above the configured height"),
    r("cometbft.max_height_jump", Scope::Cometbft, PRIVVAL_POLICY, "a huge height jump that would lock the validator out"),
    r("cometbft.first_height", Scope::Cometbft, PRIVVAL_POLICY, "a first vote far above the start height (a lockout)"),
    r("cometbft.height_rate", Scope::Cometbft, PRIVVAL_POLICY, "heights advancing faster than the clock allows (a lockout in steps)"),
    r("cometbft.timestamp_drift", Scope::Cometbft, PRIVVAL_POLICY, "proposals with a timestamp far from the clock"),
    r("cometbft.height_regression", Scope::Cometbft, PRIVVAL_POLICY, "signing below the watermark height"),
    r("cometbft.round_regression", Scope::Cometbft, PRIVVAL_POLICY, "signing below the watermark round"),
    r("cometbft.step_regression", Scope::Cometbft, PRIVVAL_POLICY, "signing below the watermark step"),
    r("cometbft.double_sign", Scope::Cometbft, PRIVVAL_POLICY, "two different votes or proposals for one height/round/step"),
    r("cometbft.conflicting_data", Scope::Cometbft, PRIVVAL_POLICY, "the same HRS with other data (a double sign in disguise)"),
    r("cometbft.sign_bytes", Scope::Cometbft, PRIVVAL_DENIED, "blind SignBytes requests"),
    r("cometbft.no_state", Scope::Cometbft, PRIVVAL_POLICY, "signing with no durable watermark (a double sign after restore)"),
    // --- Ethereum consensus layer (eth2 remote signing) ---
    r(eth2::NETWORK, Scope::Eth2, HTTP403, "signatures valid on another network (genesis validators root, fork versions, deposit genesis fork)"),
    r(eth2::FORK, Scope::Eth2, HTTP403, "fork_info or a block/aggregate version that disagrees with keyguard's fork schedule at that epoch"),
    r(eth2::BLOCK_FORMAT, Scope::Eth2, HTTP400, "full phase0/altair block bodies keyguard does not hash (BLOCK, BLOCK_V2 without block_header)"),
    r(eth2::SIGNING_ROOT, Scope::Eth2, HTTP400, "a client signingRoot that is not the root keyguard computed (blind signing)"),
    r(eth2::PUBKEY_MISMATCH, Scope::Eth2, HTTP403, "registrations or deposits naming another validator's key"),
    r(eth2::UNKNOWN_KEY, Scope::Eth2, HTTP404, "signing with a key keyguard does not hold for eth2"),
    r(eth2::KEY_BACKEND, Scope::Eth2, HTTP403, "BLS keys on a backend without BLS12-381 (PKCS#11, cloud KMS)"),
    r(eth2::DOUBLE_PROPOSAL, Scope::Eth2, HTTP412, "a second, different block for a slot already signed (slashable)"),
    r(eth2::DOUBLE_VOTE, Scope::Eth2, HTTP412, "a second, different attestation for a target epoch already signed (slashable)"),
    r(eth2::SURROUND_VOTE, Scope::Eth2, HTTP412, "an attestation surrounding or surrounded by one already signed (slashable)"),
    r(eth2::SOURCE_AFTER_TARGET, Scope::Eth2, HTTP412, "an attestation whose source epoch is after its target"),
    r(eth2::BELOW_WATERMARK, Scope::Eth2, HTTP412, "signing at or below an imported low watermark (history keyguard cannot see)"),
    r(eth2::NOT_INCREASING, Scope::Eth2, HTTP412, "with the EIP-3076 minimal strategy: a block slot not above every signed one, or an attestation whose source is below or target not above every signed one (the same message again included)"),
    r(eth2::CLOCK_WINDOW, Scope::Eth2, HTTP403, "far-future slots or epochs that would lock the key out (and stale ones), and registrations timestamped ahead that would outrank later ones, judged by the wall clock"),
    r(eth2::PROPOSER_INDEX, Scope::Eth2, HTTP403, "blocks for a proposer index other than the key's configured validator index"),
    r(eth2::FEE_RECIPIENT, Scope::Eth2, HTTP403, "builder registrations paying a fee recipient outside the allowlist"),
    r(eth2::GAS_LIMIT, Scope::Eth2, HTTP403, "builder registrations with a gas limit outside the allowlist"),
    r(eth2::VOLUNTARY_EXIT, Scope::Eth2, HTTP403, "voluntary exits (irreversible) without M-of-N approval (`exit_approval`; refused outright when unset)"),
    r(eth2::DEPOSIT, Scope::Eth2, HTTP403, "deposit messages (withdrawal credentials decide who owns the stake) without M-of-N approval (`deposit_approval`; refused outright when unset)"),
    r(eth2::DUTY_DISABLED, Scope::Eth2, HTTP403, "duties the key's policy switched off"),
    r(eth2::RATE_LIMIT, Scope::Eth2, HTTP429, "one key signing one duty faster than the policy allows"),
    r(eth2::BLOCK_PROOF, Scope::Eth2, HTTP400, "malformed Nimbus block `proofs`: an index that is not the fee recipient's or graffiti's in keyguard's fork at the slot, a branch of the wrong length, a property proven twice, too many entries"),
    r(eth2::BLOCK_PROOF_REQUIRED, Scope::Eth2, HTTP403, "a block without the proofs `require_block_proofs` asks for (the fee recipient and graffiti hidden behind `body_root`)"),
    r(eth2::BLOCK_FEE_RECIPIENT, Scope::Eth2, HTTP403, "a block whose fee-recipient proof proves none of `block_fee_recipients` (another payee, or a forged branch)"),
    r(eth2::GRAFFITI, Scope::Eth2, HTTP403, "a block whose graffiti proof proves none of `block_graffiti`"),
    r(eth2::STORE_UNAVAILABLE, Scope::Eth2, "HTTP 503", "(failure) a slashing record, approval or audit row that could not be written: nothing signed, or the signature withheld"),
    // --- every chain ---
    r(common::REQUEST_INVALID, Scope::Any, INVALID, "malformed requests (the error names the field)"),
    r(common::POLICY_NONE, Scope::Any, P, "a key with no policy for the chain asked"),
    r(common::POLICY_CONFIG, Scope::Any, P, "a policy whose rules did not compile"),
    r(common::POLICY_LIMITS, Scope::Any, "-", "(allow only) a policy without a rule list allowed the request within its fixed limits"),
    r(common::KILL_SWITCH, Scope::Any, "-32004", "any signature while the key (or every key) is switched off"),
    r(common::KILL_SWITCH_EMERGENCY, Scope::Any, "-", "(audit event) the emergency stop (SIGUSR1 or kill file) switched every key off"),
    r("access.unauthenticated", Scope::Any, UNAUTH, "callers without a valid credential"),
    r("access.key_not_granted", Scope::Any, UNAUTH, "callers using a key they were not granted"),
    r("access.method_not_granted", Scope::Any, UNAUTH, "callers using a method outside their scope"),
    r("access.chain_not_granted", Scope::Any, UNAUTH, "callers using a chain outside their scope"),
    r("rate_limit.client", Scope::Any, "-32003", "one client flooding the signer"),
    r("rate_limit.key", Scope::Any, "-32003", "one key signed too often"),
    r("rate_limit.method", Scope::Any, "-32003", "one method family (aliases share it) called too often"),
    r("rate_limit.unauthenticated", Scope::Any, "-32003", "floods of calls without a valid credential (one summary row per interval)"),
    r("guard.pass2_mismatch", Scope::Any, "-32007", "(withheld) a backend signature that fails verification or re-decoding: a faulty or lying signer"),
    r("approval.required", Scope::Any, "-32002", "(held) a request waiting for human approval"),
    r("approval.unavailable", Scope::Any, P, "approval rules without an approval book (refused, never signed)"),
    r("approval.rejected", Scope::Any, P, "a request an approver rejected"),
    r("approval.consumed", Scope::Any, P, "replaying an approval already used"),
    r("approval.self", Scope::Admin, ADMIN_REFUSED, "approving one's own request"),
    r("approval.group", Scope::Admin, ADMIN_REFUSED, "approvals from outside the rule's group"),
    r("approval.duplicate_vote", Scope::Admin, ADMIN_REFUSED, "one person counted twice"),
    r("approval.expired", Scope::Admin, ADMIN_REFUSED, "approving after the deadline"),
    r("approval.not_pending", Scope::Admin, ADMIN_REFUSED, "voting on a request that is not pending"),
    r("approval.pending_cap", Scope::Any, P, "floods of held requests (pending approvals per client and overall)"),
    r("audit.disk_floor", Scope::Any, "-32003", "new work when the data directory is nearly full (audit rows must still fit)"),
    r("audit.suppressed", Scope::Any, "-", "(audit event) the summary row counting refusals over a source's budget"),
    r("audit.broken", Scope::Admin, ADMIN_REFUSED, "(answer) `audit.verify` found a row whose hash does not match"),
    r("store.tripwire", Scope::Any, P, "signing again after a database failover lost commits: the shared store is behind what this instance released, or is another database or timeline (until `keyguard store trust`)"),
    r("audit.refusal_budget", Scope::Any, "-", "(audit event) refusal rows over a source's budget, counted in one audit.suppressed row"),
    // --- admin socket ---
    r("admin.auth", Scope::Admin, "admin -32005", "admin calls without valid credentials or TOTP"),
    r("admin.totp_lockout", Scope::Admin, "admin -32005", "TOTP guessing (locked out after repeated failures)"),
    r("admin.role", Scope::Admin, "admin -32005", "admin methods outside the caller's roles"),
    r("admin.two_admins", Scope::Admin, "-", "(audit event) a change that needed a second admin"),
    r("admin.invalid", Scope::Admin, "admin -32602", "malformed admin requests"),
    r("admin.internal", Scope::Admin, "admin -32603", "(failure) an internal error; nothing changed"),
    r("admin.unknown_method", Scope::Admin, "admin -32601", "methods the admin socket does not have"),
    r("admin.self_remove", Scope::Admin, ADMIN_REFUSED, "an admin removing their own access"),
    r("admin.kill_file", Scope::Admin, ADMIN_REFUSED, "re-enabling keys while the emergency kill file is present"),
    r("admin.reload", Scope::Admin, ADMIN_REFUSED, "a reload whose new config is invalid"),
    r("admin.config_client", Scope::Admin, ADMIN_REFUSED, "changing a client defined in the config file"),
    r("admin.connection_cap", Scope::Admin, "connection closed", "exhausting the admin listener's connections (overall and per peer)"),
    r("admin.peer_rate", Scope::Admin, "admin -32003", "one admin peer flooding requests"),
    r("admin.peer_throttle", Scope::Admin, "admin -32005", "TOTP guessing from one peer (before any per-user lockout)"),
    r("admin.totp_reused", Scope::Admin, "admin -32005", "replaying a TOTP code already used"),
    r("admin.watermark_repair", Scope::Admin, ADMIN_REFUSED, "a watermark repair below what this instance released"),
    // --- web console (docs/console.md) ---
    r("admin.console_fresh_totp", Scope::Admin, "admin -32005", "a console session changing state without a fresh TOTP code"),
    r("admin.console_origin", Scope::Admin, "console 403", "cross-site console requests (Origin is not the console's own)"),
    r("admin.console_csrf", Scope::Admin, "console 403", "console forms without the session's CSRF token"),
    r("admin.console_session", Scope::Admin, "console 401", "console actions without a signed-in session"),
    r("admin.console_passkey", Scope::Admin, "console 400/401", "passkey enrolments or sign-ins that do not verify (no user verification, wrong challenge, origin or credential)"),
    r("admin.console_busy", Scope::Admin, "console 503", "floods of passkey ceremonies in progress"),
];

/// Old names still accepted where users type a rule name (`keyguard audit query --rule`), with
/// the name they now mean. `kill_switch` was the kill switch's rule before it was namespaced;
/// audit rows written before then still carry it.
pub const ALIASES: &[(&str, &str)] = &[("kill_switch", common::KILL_SWITCH)];

/// The registry entry for `name`, if it is a built-in rule.
pub fn lookup(name: &str) -> Option<&'static RuleInfo> {
    BUILTIN.iter().find(|r| r.name == name)
}

/// Why a user-chosen rule name is not allowed: it would shadow a built-in namespace.
pub fn check_user_rule_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a rule name may not be empty".into());
    }
    let lower = name.to_ascii_lowercase();
    match RESERVED_NAMESPACES.iter().find(|p| lower.starts_with(*p)) {
        Some(p) => Err(format!(
            "{name:?} uses the built-in namespace {p:?}; choose a name outside {}",
            RESERVED_NAMESPACES.join(", ")
        )),
        None => Ok(()),
    }
}

/// The `docs/rules.md` table, rendered from [`BUILTIN`] (a test keeps the file equal to it).
pub fn docs_table() -> String {
    let mut s = String::from(
        "# Rules\n\n\
         Every refusal names one rule. The same name is in the error (`data.rule` of JSON-RPC\n\
         `-32001` and friends, the description of a privval error), the audit row (`rule`), the\n\
         metric `keyguard_rejections_total{rule}` and the dry run (`keyguard policy check`).\n\
         User-defined rules (EVM allow/deny, typed-data and message rules, velocity limits) are\n\
         reported by their own names, which may not start with a built-in namespace:\n",
    );
    let ns: Vec<String> = RESERVED_NAMESPACES
        .iter()
        .map(|n| format!("`{n}`"))
        .collect();
    s.push_str(&ns.join(", "));
    s.push_str(
        " (refused at config load).\n\n\
         This file is generated from the registry in `chains/api/src/rules.rs`; a test checks\n\
         that it lists exactly the registry's names (regenerate with\n\
         `KEYGUARD_BLESS=1 cargo test -p keyguard-chain docs_rules_table`).\n\n\
         | rule | applies to | error code | stops |\n| --- | --- | --- | --- |\n",
    );
    for r in BUILTIN {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.name,
            r.scope.as_str(),
            r.code,
            r.stops.replace('|', "\\|")
        ));
    }
    s.push_str("\nAliases (old names still accepted by `keyguard audit query --rule`):\n\n");
    for (old, new) in ALIASES {
        s.push_str(&format!("- `{old}` -> `{new}`\n"));
    }
    s
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
