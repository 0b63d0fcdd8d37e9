//! The operator's address book: labels the approvals page shows beside a destination, so an
//! approver reads "Treasury cold wallet" instead of comparing forty hex digits by eye.
//!
//! Labels come only from the configuration (`[admin.console.labels]`), never from a request,
//! so a requester cannot name its own destination. What a hostile requester tries next, and
//! what happens:
//! - an address that differs from a labelled one in a single digit, or shares its first and
//!   last characters: no label (exact match only), and the page says "no label";
//! - the labelled address in another letter case (EIP-55 checksum, upper-case bech32): the
//!   same label, since the address is the same;
//! - a label that hides or reorders text (control or bidi-override characters, 500 characters
//!   of padding): refused when the configuration is loaded ([`label_problem`]); labels are
//!   escaped like every other value on the page.

use std::collections::{BTreeMap, HashMap};

/// Longest label, in characters.
pub(super) const MAX_LABEL_CHARS: usize = 64;
/// Most labels one configuration may hold.
pub(super) const MAX_LABELS: usize = 10_000;

/// The address as labels are looked up: EVM hex and bech32 addresses are case-insensitive,
/// so they are folded to lower case; base58 addresses are case-sensitive and kept exactly.
pub(super) fn normalize(address: &str) -> String {
    let lower = address.to_ascii_lowercase();
    let is_hex = lower.len() == 42
        && lower.starts_with("0x")
        && lower[2..].bytes().all(|b| b.is_ascii_hexdigit());
    let is_bech32 = ["bc1", "tb1", "bcrt1"].iter().any(|p| lower.starts_with(p));
    if is_hex || is_bech32 {
        lower
    } else {
        address.to_owned()
    }
}

/// Why `address = label` cannot be a label entry, if it cannot.
fn label_problem(address: &str, label: &str) -> Option<String> {
    if address.is_empty() || address.len() > 128 || !address.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(format!("{address:?}: not an address"));
    }
    let chars = label.chars().count();
    if label.trim().is_empty() || chars > MAX_LABEL_CHARS {
        return Some(format!(
            "{address}: a label is 1 to {MAX_LABEL_CHARS} characters"
        ));
    }
    if let Some(c) = label.chars().find(|c| hides_text(*c)) {
        return Some(format!(
            "{address}: the label holds U+{:04X}, which hides or reorders text",
            c as u32
        ));
    }
    None
}

/// Control characters, bidi overrides and isolates, zero-width and other invisible format
/// characters: any of them lets a label display differently from what it holds.
fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Every problem of an `[admin.console.labels]` table.
pub(super) fn table_problems(table: &BTreeMap<String, String>) -> Vec<String> {
    if table.len() > MAX_LABELS {
        return vec![format!("{} labels; at most {MAX_LABELS}", table.len())];
    }
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut problems = Vec::new();
    for (address, label) in table {
        if let Some(p) = label_problem(address, label) {
            problems.push(p);
        } else if let Some(first) = seen.insert(normalize(address), address) {
            problems.push(format!("{address} and {first} are one address"));
        }
    }
    problems
}

/// Labels by normalized address.
#[derive(Clone, Debug, Default)]
pub struct Labels(HashMap<String, String>);

impl Labels {
    /// From the validated configuration table.
    pub fn new(table: &BTreeMap<String, String>) -> Labels {
        Labels(
            table
                .iter()
                .map(|(a, l)| (normalize(a), l.trim().to_owned()))
                .collect(),
        )
    }

    /// The label of `address`, if the operator gave it one.
    pub fn get(&self, address: &str) -> Option<&str> {
        self.0.get(&normalize(address)).map(String::as_str)
    }

    /// `address (label)` or `address (no label)`, for the plain-words line.
    pub fn show(&self, address: &str) -> String {
        match self.get(address) {
            Some(l) => format!("{address} ({l})"),
            None => format!("{address} (no label)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_folds_only_where_the_address_format_does() {
        let mut t = BTreeMap::new();
        t.insert(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".to_owned(),
            "Treasury".to_owned(),
        );
        t.insert(
            "BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ".to_owned(),
            " Cold ".to_owned(),
        );
        t.insert(
            "1BoatSLRHtKNngkdXEeobR76b53LETtpyT".to_owned(),
            "Legacy".to_owned(),
        );
        let l = Labels::new(&t);
        assert_eq!(
            l.get("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"),
            Some("Treasury")
        );
        assert_eq!(
            l.get("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),
            Some("Cold")
        );
        assert_eq!(l.get("1BoatSLRHtKNngkdXEeobR76b53LETtpyT"), Some("Legacy"));
        // Base58 is case-sensitive: another case is another (invalid) address.
        assert_eq!(l.get("1boatslrhtknngkdxeeobr76b53lettpyt"), None);
        // One digit off: no label.
        assert_eq!(l.get("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaee"), None);
        assert_eq!(
            l.show("0x000000000000000000000000000000000000dEaD"),
            "0x000000000000000000000000000000000000dEaD (no label)"
        );
    }

    #[test]
    fn one_address_twice_is_refused() {
        let mut t = BTreeMap::new();
        t.insert(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".to_owned(),
            "A".to_owned(),
        );
        t.insert(
            "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed".to_owned(),
            "B".to_owned(),
        );
        assert_eq!(table_problems(&t).len(), 1);
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("0x{i:040x}"), "x".to_owned()))
            .collect();
        assert_eq!(table_problems(&many).len(), 1);
    }

    #[test]
    fn labels_that_hide_text_are_refused() {
        let a = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
        assert_eq!(label_problem(a, "Treasury cold wallet"), None);
        assert_eq!(label_problem(a, "Trésorerie — froid"), None);
        for bad in [
            "",
            "   ",
            "evil\u{202E}tellaw",
            "a\u{200B}b",
            "line\nbreak",
            "x\u{FEFF}",
        ] {
            assert!(label_problem(a, bad).is_some(), "{bad:?}");
        }
        assert!(label_problem(a, &"x".repeat(MAX_LABEL_CHARS + 1)).is_some());
        assert_eq!(label_problem(a, &"é".repeat(MAX_LABEL_CHARS)), None);
        assert!(label_problem("0x12 34", "ok").is_some());
    }
}
