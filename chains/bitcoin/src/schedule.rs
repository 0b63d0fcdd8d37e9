//! `bitcoin.time_window`: the days and hours a key may sign at all.
//!
//! The shape is shared with every chain ([`keyguard_chain::window`]): `hours` as
//! `"HH:MM-HH:MM"` or `[8, 18]`, `days`, `utc_offset`, overnight windows.
//!
//! ```toml
//! time_window = { days = ["mon", "tue", "wed", "thu", "fri"], hours = "08:00-18:00", utc_offset = "+01:00" }
//! ```

pub use keyguard_chain::window::{Hours, TimeWindow, Weekday};
