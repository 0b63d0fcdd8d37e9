//! The eth2 duty policy: rules on a decoded duty, checked before the key is touched (switched
//! off duties, exits and deposits without approval, the clock window, proposer index, fee
//! recipient, gas limit, per-key rate limits).

use keyguard_chain::rules::eth2 as rule;
use keyguard_eth2::{Duty, DutyKind};

use super::{Eth2Guard, Eth2Refusal, Status};

impl Eth2Guard {
    /// Policy rules on a decoded duty (before the key is touched).
    pub(super) fn policy(&self, pk: &[u8; 48], d: &Duty, now_unix: u64) -> Result<(), Eth2Refusal> {
        let forbid = |r: &'static str, f: &str, why: String| {
            Err(Eth2Refusal::new(Status::Forbidden, r, f, why))
        };
        if self
            .policy
            .disabled_duties
            .iter()
            .any(|x| x == d.kind.as_str())
        {
            return forbid(
                rule::DUTY_DISABLED,
                "type",
                format!("{} is switched off by policy", d.kind.as_str()),
            );
        }
        match (d.kind, &self.policy.exit_approval, &self.policy.deposit_approval) {
            (DutyKind::VoluntaryExit, None, _) => {
                return forbid(
                    rule::VOLUNTARY_EXIT,
                    "voluntary_exit",
                    "voluntary exits are irreversible; configure [eth2.policy.exit_approval] to allow them with M-of-N approval".into(),
                )
            }
            (DutyKind::Deposit, _, None) => {
                return forbid(
                    rule::DEPOSIT,
                    "deposit",
                    "deposit messages decide who owns the stake; configure [eth2.policy.deposit_approval] to allow them with M-of-N approval".into(),
                )
            }
            _ => {}
        }
        let net = &self.network;
        let now_slot = net.slot_at(now_unix);
        let now_epoch = net.epoch_of(now_slot);
        if let Some(slot) = d.slot {
            if slot > now_slot.saturating_add(self.policy.max_future_slots) {
                return forbid(
                    rule::CLOCK_WINDOW,
                    "slot",
                    format!(
                        "slot {slot} is more than {} slots ahead of the clock (slot {now_slot})",
                        self.policy.max_future_slots
                    ),
                );
            }
        }
        if let Some(epoch) = d.epoch {
            let max_epoch = net
                .epoch_of(now_slot.saturating_add(self.policy.max_future_slots))
                .saturating_add(1);
            if epoch > max_epoch {
                return forbid(
                    rule::CLOCK_WINDOW,
                    "epoch",
                    format!("epoch {epoch} is ahead of the clock (epoch {now_epoch})"),
                );
            }
            if self.policy.max_past_epochs > 0
                && epoch.saturating_add(self.policy.max_past_epochs) < now_epoch
            {
                return forbid(
                    rule::CLOCK_WINDOW,
                    "epoch",
                    format!(
                        "epoch {epoch} is older than {} epochs",
                        self.policy.max_past_epochs
                    ),
                );
            }
        }
        if let Some(ts) = d.timestamp {
            // A registration timestamped ahead would outrank every later one at the relays.
            let ahead = self
                .policy
                .max_future_slots
                .saturating_mul(net.seconds_per_slot);
            if ts > now_unix.saturating_add(ahead) {
                return forbid(
                    rule::CLOCK_WINDOW,
                    "validator_registration.timestamp",
                    format!("{ts} is more than {ahead} s ahead of the clock ({now_unix})"),
                );
            }
        }
        if let (Some(idx), Some(want)) = (d.proposer_index, self.proposer_index.get(pk)) {
            if idx != *want {
                return forbid(
                    rule::PROPOSER_INDEX,
                    "beacon_block.block_header.proposer_index",
                    format!("{idx} is not this key's validator index {want}"),
                );
            }
        }
        if let Some(fee) = d.fee_recipient {
            if !self.fee_recipients.is_empty() && !self.fee_recipients.contains(&fee) {
                return forbid(
                    rule::FEE_RECIPIENT,
                    "validator_registration.fee_recipient",
                    format!("0x{} is not in the allowlist", hex::encode(fee)),
                );
            }
        }
        if let Some(gas) = d.gas_limit {
            let lo = self.policy.min_gas_limit.unwrap_or(0);
            let hi = self.policy.max_gas_limit.unwrap_or(u64::MAX);
            if gas < lo || gas > hi {
                return forbid(
                    rule::GAS_LIMIT,
                    "validator_registration.gas_limit",
                    format!("{gas} is outside {lo}..={hi}"),
                );
            }
        }
        if let Some(lim) = self.limits.get(&d.kind) {
            if lim.check_key(pk).is_err() {
                return Err(Eth2Refusal::new(
                    Status::TooMany,
                    rule::RATE_LIMIT,
                    "type",
                    format!("{} signed too often for this key", d.kind.as_str()),
                ));
            }
        }
        Ok(())
    }
}
