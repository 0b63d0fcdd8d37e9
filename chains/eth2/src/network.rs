//! keyguard's own view of each network: genesis validators root, genesis time, slot timing and
//! the fork schedule. Signing roots are computed from this, never from what a client sends, so
//! a client (or whoever controls it) cannot obtain a signature valid on another network or
//! under a fork the network has not reached.

use serde::Deserialize;

/// The consensus forks keyguard knows, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForkName {
    /// Genesis.
    Phase0,
    /// Altair (sync committees).
    Altair,
    /// Bellatrix (the merge).
    Bellatrix,
    /// Capella (withdrawals; EIP-7044 pins exits to its version).
    Capella,
    /// Deneb.
    Deneb,
    /// Electra (committee bits in attestations).
    Electra,
    /// Fulu.
    Fulu,
}

impl ForkName {
    /// All forks, oldest first.
    pub const ALL: [ForkName; 7] = [
        ForkName::Phase0,
        ForkName::Altair,
        ForkName::Bellatrix,
        ForkName::Capella,
        ForkName::Deneb,
        ForkName::Electra,
        ForkName::Fulu,
    ];

    /// The upper-case name Web3Signer's `BLOCK_V2` `version` field uses.
    pub fn upper(self) -> &'static str {
        match self {
            ForkName::Phase0 => "PHASE0",
            ForkName::Altair => "ALTAIR",
            ForkName::Bellatrix => "BELLATRIX",
            ForkName::Capella => "CAPELLA",
            ForkName::Deneb => "DENEB",
            ForkName::Electra => "ELECTRA",
            ForkName::Fulu => "FULU",
        }
    }

    /// Parses a fork name (any case).
    pub fn parse(s: &str) -> Option<ForkName> {
        ForkName::ALL
            .into_iter()
            .find(|f| f.upper().eq_ignore_ascii_case(s))
    }
}

/// One scheduled fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// Which fork.
    pub name: ForkName,
    /// Its 4-byte version.
    pub version: [u8; 4],
    /// First epoch under it.
    pub epoch: u64,
}

/// A network as keyguard signs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Name (config and audit).
    pub name: String,
    /// `genesis_validators_root`.
    pub genesis_validators_root: [u8; 32],
    /// Unix seconds of slot 0.
    pub genesis_time: u64,
    /// Seconds per slot.
    pub seconds_per_slot: u64,
    /// Slots per epoch (32; 16 on Gnosis).
    pub slots_per_epoch: u64,
    /// Scheduled forks, ascending by epoch, starting with phase0 at epoch 0.
    pub forks: Vec<Fork>,
}

/// A custom network as written in the config (`[eth2.custom]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomNetwork {
    /// Name shown in audit rows.
    pub name: String,
    /// `0x` + 64 hex.
    pub genesis_validators_root: String,
    /// Unix seconds.
    pub genesis_time: u64,
    /// Default 12.
    #[serde(default)]
    pub seconds_per_slot: Option<u64>,
    /// Default 32.
    #[serde(default)]
    pub slots_per_epoch: Option<u64>,
    /// `[{ name = "phase0", version = "0x00000000", epoch = 0 }, ...]`.
    pub forks: Vec<CustomFork>,
}

/// One fork of a custom network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFork {
    /// `phase0` .. `fulu`.
    pub name: String,
    /// `0x` + 8 hex.
    pub version: String,
    /// Activation epoch.
    pub epoch: u64,
}

fn v(x: u32) -> [u8; 4] {
    x.to_be_bytes()
}

fn root(s: &str) -> [u8; 32] {
    let mut r = [0u8; 32];
    hex::decode_to_slice(s, &mut r).expect("built-in root is 64 hex digits");
    r
}

fn schedule(versions: [u32; 7], epochs: [u64; 7]) -> Vec<Fork> {
    ForkName::ALL
        .into_iter()
        .zip(versions)
        .zip(epochs)
        .filter(|(_, e)| *e != u64::MAX)
        .map(|((name, ver), epoch)| Fork {
            name,
            version: v(ver),
            epoch,
        })
        .collect()
}

const FAR: u64 = u64::MAX;

impl Network {
    /// A built-in network by name: `mainnet`, `holesky`, `hoodi`, `sepolia`, `gnosis`.
    pub fn builtin(name: &str) -> Option<Network> {
        let (gvr, time, sps, spe, versions, epochs) = match name {
            "mainnet" => (
                "4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95",
                1_606_824_023,
                12,
                32,
                [
                    0x0000_0000,
                    0x0100_0000,
                    0x0200_0000,
                    0x0300_0000,
                    0x0400_0000,
                    0x0500_0000,
                    0x0600_0000,
                ],
                [0, 74_240, 144_896, 194_048, 269_568, 364_032, 411_392],
            ),
            "holesky" => (
                "9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1",
                1_695_902_400,
                12,
                32,
                [
                    0x0101_7000,
                    0x0201_7000,
                    0x0301_7000,
                    0x0401_7000,
                    0x0501_7000,
                    0x0601_7000,
                    0x0701_7000,
                ],
                [0, 0, 0, 256, 29_696, 115_968, 165_120],
            ),
            "hoodi" => (
                "212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f",
                1_742_213_400,
                12,
                32,
                [
                    0x1000_0910,
                    0x2000_0910,
                    0x3000_0910,
                    0x4000_0910,
                    0x5000_0910,
                    0x6000_0910,
                    0x7000_0910,
                ],
                [0, 0, 0, 0, 0, 2_048, 50_688],
            ),
            "sepolia" => (
                "d8ea171f3c94aea21ebc42a1ed61052acf3f9209c00e4efbaaddac09ed9b8078",
                1_655_733_600,
                12,
                32,
                [
                    0x9000_0069,
                    0x9000_0070,
                    0x9000_0071,
                    0x9000_0072,
                    0x9000_0073,
                    0x9000_0074,
                    0x9000_0075,
                ],
                [0, 50, 100, 56_832, 132_608, 222_464, 272_640],
            ),
            "gnosis" => (
                "f5dcb5564e829aab27264b9becd5dfaa017085611224cb3036f573368dbb9d47",
                1_638_993_340,
                5,
                16,
                [
                    0x0000_0064,
                    0x0100_0064,
                    0x0200_0064,
                    0x0300_0064,
                    0x0400_0064,
                    0x0500_0064,
                    0x0600_0064,
                ],
                [0, 512, 385_536, 648_704, 889_856, 1_337_856, 1_714_688],
            ),
            _ => return None,
        };
        let _ = FAR;
        Some(Network {
            name: name.to_string(),
            genesis_validators_root: root(gvr),
            genesis_time: time,
            seconds_per_slot: sps,
            slots_per_epoch: spe,
            forks: schedule(versions, epochs),
        })
    }

    /// Builds and validates a custom network.
    pub fn custom(c: &CustomNetwork) -> Result<Network, String> {
        let gvr_hex = c
            .genesis_validators_root
            .strip_prefix("0x")
            .ok_or("genesis_validators_root: expected 0x + 64 hex digits")?;
        let mut gvr = [0u8; 32];
        hex::decode_to_slice(gvr_hex, &mut gvr)
            .map_err(|_| "genesis_validators_root: expected 0x + 64 hex digits")?;
        let mut forks = Vec::new();
        for f in &c.forks {
            let name = ForkName::parse(&f.name)
                .ok_or_else(|| format!("forks: unknown fork {:?}", f.name))?;
            let mut version = [0u8; 4];
            let vh = f.version.strip_prefix("0x").unwrap_or("");
            hex::decode_to_slice(vh, &mut version)
                .map_err(|_| format!("forks.{}: version must be 0x + 8 hex digits", f.name))?;
            forks.push(Fork {
                name,
                version,
                epoch: f.epoch,
            });
        }
        let n = Network {
            name: c.name.clone(),
            genesis_validators_root: gvr,
            genesis_time: c.genesis_time,
            seconds_per_slot: c.seconds_per_slot.unwrap_or(12),
            slots_per_epoch: c.slots_per_epoch.unwrap_or(32),
            forks,
        };
        n.validate()?;
        Ok(n)
    }

    /// The schedule must start at phase0/epoch 0 and ascend in both fork order and epoch.
    pub fn validate(&self) -> Result<(), String> {
        if self.seconds_per_slot == 0 || self.slots_per_epoch == 0 {
            return Err("seconds_per_slot and slots_per_epoch must be positive".into());
        }
        match self.forks.first() {
            Some(f) if f.name == ForkName::Phase0 && f.epoch == 0 => {}
            _ => return Err("forks: the first fork must be phase0 at epoch 0".into()),
        }
        for w in self.forks.windows(2) {
            if w[1].name <= w[0].name || w[1].epoch < w[0].epoch {
                return Err("forks: must ascend by name and epoch".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        if !self.forks.iter().all(|f| seen.insert(f.version)) {
            return Err("forks: two forks share a version".into());
        }
        Ok(())
    }

    /// The fork in force at `epoch`.
    pub fn fork_at(&self, epoch: u64) -> &Fork {
        self.forks
            .iter()
            .rev()
            .find(|f| f.epoch <= epoch)
            .unwrap_or(&self.forks[0])
    }

    /// The fork by name, if scheduled.
    pub fn fork(&self, name: ForkName) -> Option<&Fork> {
        self.forks.iter().find(|f| f.name == name)
    }

    /// The fork with this version, if scheduled.
    pub fn fork_by_version(&self, version: [u8; 4]) -> Option<&Fork> {
        self.forks.iter().find(|f| f.version == version)
    }

    /// `GENESIS_FORK_VERSION`.
    pub fn genesis_fork_version(&self) -> [u8; 4] {
        self.forks[0].version
    }

    /// The epoch of `slot`.
    pub fn epoch_of(&self, slot: u64) -> u64 {
        slot / self.slots_per_epoch
    }

    /// The wall-clock slot at unix second `now` (0 before genesis).
    pub fn slot_at(&self, now: u64) -> u64 {
        now.saturating_sub(self.genesis_time) / self.seconds_per_slot
    }
}
