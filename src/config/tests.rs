use super::*;

const DEV: &str = include_str!("../../configs/dev.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

#[test]
fn dev_config_parses() {
    let c = parse(DEV).unwrap();
    assert!(c.dev);
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8550");
    assert_eq!(c.listeners[0].chain_id, 31337);
    let evm = c.policies[0].evm.as_ref().unwrap();
    assert_eq!(evm.chain_ids, vec![1337, 31337]);
    assert!(evm.delegations.is_empty());
}

#[test]
fn unknown_keys_are_refused_with_their_location() {
    let text = DEV.replace("max_value =", "max_valu =");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("max_valu"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn auth_none_is_refused_off_loopback() {
    let text = DEV.replace("127.0.0.1:8550", "0.0.0.0:8550");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("listeners[0].auth"), "{err}");
}

#[test]
fn bad_token_hash_and_amounts_are_refused() {
    let text =
        format!("{DEV}\n[[clients]]\nname = \"x\"\ntoken_sha256 = \"abc\"\nkeys = [\"*\"]\n");
    assert!(parse(&text)
        .unwrap_err()
        .to_string()
        .contains("token_sha256"));
    let text = DEV.replace("\"1 ether\"", "\"1 bitcoin\"");
    assert!(parse(&text).unwrap_err().to_string().contains("unit"));
}

const COMETBFT: &str = include_str!("../../configs/cometbft-validator.toml");

#[test]
fn cometbft_example_parses_and_addresses_are_checked() {
    let c = parse(COMETBFT).unwrap();
    assert_eq!(c.validators[0].chain_id, "my-chain-1");
    assert_eq!(
        c.validators[0].parsed_addr().unwrap(),
        PrivvalAddr::Unix("/tmp/cometbft-privval.sock".into())
    );
    let tcp: PrivvalAddr = "tcp://f00dbabef00dbabef00dbabef00dbabef00dbabe@10.0.0.5:26659"
        .parse()
        .unwrap();
    assert!(matches!(tcp, PrivvalAddr::Tcp { .. }));
    for bad in [
        "tcp://10.0.0.5:26659",
        "tcp://abc@h:1",
        "http://x",
        "unix://",
    ] {
        let text = COMETBFT.replace("unix:///tmp/cometbft-privval.sock", bad);
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("validators[0].addr"), "{bad}: {err}");
    }
    let text = COMETBFT.replace("protocol = \"v0.38\"", "protocol = \"v0.39\"");
    assert!(parse(&text).is_err());
}

const PKCS11: &str = "[keystore.pkcs11]\nlibrary = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
                      token_label = \"kg\"\npin_env = \"KG_PIN\"\n";

fn with_pkcs11(table: &str) -> String {
    let dev = DEV
        .replace("backend = \"software\"", "backend = \"pkcs11\"")
        .replace("create_on_first_start = [\"secp256k1\", \"ed25519\"]", "");
    // The [keystore.pkcs11] table must follow [keystore] directly.
    dev.replacen("\n[[listeners]]", &format!("\n{table}\n[[listeners]]"), 1)
}

#[test]
fn pkcs11_keystore_parses_with_defaults() {
    let c = parse(&with_pkcs11(PKCS11)).unwrap();
    assert_eq!(c.keystore.backend, BackendKind::Pkcs11);
    let p = c.keystore.pkcs11.unwrap();
    assert_eq!(p.sessions, 4);
    assert!(!p.allow_extractable);
    assert_eq!(p.pin_source().unwrap(), PinSource::Env("KG_PIN".into()));
}

#[test]
fn pkcs11_keystore_mistakes_are_refused() {
    let cases = [
        (
            with_pkcs11("[keystore.pkcs11]\nlibrary = \"/x.so\"\ntoken_label = \"kg\"\n"),
            "pin",
        ),
        (with_pkcs11(&format!("{PKCS11}pin = \"1234\"\n")), "pin"),
        (
            with_pkcs11(&format!("{PKCS11}pin_file = \"/p\"\n")),
            "not both",
        ),
        (with_pkcs11(&format!("{PKCS11}sessions = 0\n")), "sessions"),
        (with_pkcs11(&format!("{PKCS11}keys = [\"a/b\"]\n")), "keys"),
        (
            with_pkcs11(&format!("{PKCS11}keys = [\"a\", \"a\"]\n")),
            "twice",
        ),
        (with_pkcs11(""), "needs a [keystore.pkcs11]"),
        (
            DEV.replacen("\n[[listeners]]", &format!("\n{PKCS11}\n[[listeners]]"), 1),
            "only used with backend",
        ),
        (
            with_pkcs11(PKCS11).replace(
                "[keystore.pkcs11]",
                "create_on_first_start = [\"ed25519\"]\n[keystore.pkcs11]",
            ),
            "create_on_first_start",
        ),
    ];
    for (text, needle) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

const HOT_WALLET: &str = include_str!("../../configs/bitcoin-hot-wallet.toml");

#[test]
fn bitcoin_approval_and_time_window_are_checked_at_load() {
    let c = parse(HOT_WALLET).unwrap();
    let btc = c.policies[0].bitcoin.as_ref().unwrap();
    assert_eq!(btc.require_approval.as_ref().unwrap().approvers, 2);
    let text = HOT_WALLET.replace("within = \"1h\"", "within = \"0s\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("policies[0].bitcoin.require_approval.within"),
        "{err}"
    );
    let text = HOT_WALLET.replace("approvers = 2", "approvers = 0");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("bitcoin.require_approval.approvers"), "{err}");
    let text = HOT_WALLET.replace("# time_window = { days", "time_window = { days");
    let c = parse(&text).unwrap();
    let w = c.policies[0]
        .bitcoin
        .as_ref()
        .unwrap()
        .time_window
        .clone()
        .unwrap();
    assert_eq!((w.start_min, w.end_min), (7 * 60, 22 * 60));
    let text = text.replace("07:00-22:00", "07:00-07:00");
    assert!(parse(&text).unwrap_err().to_string().contains("hours"));
}

#[test]
fn well_known_token_hashes_are_refused() {
    use sha2::{Digest, Sha256};
    let client = |token: &str| {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        format!("{DEV}\n[[clients]]\nname = \"x\"\ntoken_sha256 = \"{hash}\"\nkeys = [\"*\"]\n")
    };
    for weak in ["secret", "password", "changeme", "test", ""] {
        let err = parse(&client(weak)).unwrap_err().to_string();
        assert!(err.contains("well-known token"), "{weak:?}: {err}");
    }
    // Control: a generated token loads; so does the placeholder of the example configs.
    assert!(parse(&client("kg-2f6c0e9a-generated")).is_ok());
    assert!(well_known_token(&"0".repeat(64)).is_none());
}

/// `[store]`: each wrong shape is refused naming its key; the shared store's password never
/// comes from the file itself (no such key exists), and plain TCP is refused off loopback.
#[test]
fn store_tables_are_checked_by_name() {
    let pg = |extra: &str| {
        format!(
            "{DEV}\n[store]\nbackend = \"postgres\"\n[store.postgres]\nhosts = [\"db1\"]\n\
             user = \"kg\"\ndbname = \"kg\"\nca_file = \"/ca.pem\"\n{extra}"
        )
    };
    assert!(parse(&pg("")).is_ok());
    for (extra, key) in [
        ("tls = \"disable\"", "store.postgres.tls"),
        ("deadline_ms = 0", "store.postgres.deadline_ms"),
        ("deadline_ms = 600000", "store.postgres.deadline_ms"),
        (
            "password_env = \"P\"\npassword_file = \"/p\"",
            "store.postgres.password_file",
        ),
        ("password = \"hunter2\"", "password"),
    ] {
        let err = parse(&pg(extra)).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    // Loopback and sockets may go without TLS; `host:port` is a host too.
    let local = format!(
        "{DEV}\n[store]\nbackend = \"postgres\"\n[store.postgres]\n\
         hosts = [\"127.0.0.1:5433\", \"/run/postgresql\"]\nuser = \"kg\"\ndbname = \"kg\"\n\
         tls = \"disable\"\n"
    );
    assert!(parse(&local).is_ok(), "{:?}", parse(&local).err());
    let no_ca = format!(
        "{DEV}\n[store]\nbackend = \"postgres\"\n[store.postgres]\nhosts = [\"db1\"]\n\
         user = \"kg\"\ndbname = \"kg\"\n"
    );
    assert!(parse(&no_ca)
        .unwrap_err()
        .to_string()
        .contains("store.postgres.ca_file"));
    let missing = format!("{DEV}\n[store]\nbackend = \"postgres\"\n");
    assert!(parse(&missing)
        .unwrap_err()
        .to_string()
        .contains("store.postgres"));
    let stray =
        format!("{DEV}\n[store.postgres]\nhosts = [\"db1\"]\nuser = \"kg\"\ndbname = \"kg\"\n");
    assert!(parse(&stray)
        .unwrap_err()
        .to_string()
        .contains("store.postgres"));
    let empty = format!(
        "{DEV}\n[store]\nbackend = \"postgres\"\n[store.postgres]\nhosts = []\nuser = \"kg\"\n\
         dbname = \"kg\"\n"
    );
    assert!(parse(&empty)
        .unwrap_err()
        .to_string()
        .contains("store.postgres.hosts"));
}

#[test]
fn console_labels_are_checked_at_load() {
    let with = |labels: &str| {
        format!(
            "{DEV}\n[admin]\ntcp = \"127.0.0.1:9551\"\n[admin.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
             client_ca_waived = true\n[admin.console]\nenabled = true\n\
             origin = \"https://localhost:9551\"\n[admin.console.labels]\n{labels}"
        )
    };
    let ok = with("\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\" = \"Treasury cold wallet\"\n");
    let c = parse(&ok).unwrap_or_else(|e| panic!("{e}"));
    let labels = Labels::new(&c.admin.console.as_ref().unwrap().labels);
    assert_eq!(
        labels.get("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"),
        Some("Treasury cold wallet")
    );
    for bad in [
        "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\" = \"Treasury\\u202Ecold\"\n",
        "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\" = \"A\"\n\
         \"0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed\" = \"B\"\n",
        "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\" = \"\"\n",
    ] {
        let err = parse(&with(bad)).unwrap_err().to_string();
        assert!(err.contains("admin.console.labels"), "{bad}: {err}");
    }
}

#[test]
fn eth2_block_rules_are_checked_at_load() {
    let eth2 = |policy: &str| {
        format!("{DEV}\n[eth2]\naddress = \"127.0.0.1:9000\"\nauth = \"none\"\n[eth2.policy]\n{policy}\n")
    };
    let err = parse(&eth2("require_block_proofs = true"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("eth2.policy.require_block_proofs"), "{err}");
    let err = parse(&eth2(&format!("block_graffiti = [\"{}\"]", "g".repeat(33))))
        .unwrap_err()
        .to_string();
    assert!(err.contains("eth2.policy.block_graffiti"), "{err}");
    let err = parse(&eth2("block_fee_recipients = [\"0x12\"]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("eth2.policy.block_fee_recipients"), "{err}");
    // Positive control: text and hex graffiti, one fee recipient, proofs required.
    let ok = eth2(&format!(
        "require_block_proofs = true\nblock_graffiti = [\"my pool\", \"0x{}\"]\nblock_fee_recipients = [\"0x{}\"]",
        "6b".repeat(32),
        "ab".repeat(20)
    ));
    parse(&ok).unwrap();
    let mut want = [0u8; 32];
    want[..7].copy_from_slice(b"my pool");
    assert_eq!(graffiti_bytes("my pool").unwrap(), want);
    assert_eq!(
        graffiti_bytes(&format!("0x{}", "6B".repeat(32))).unwrap(),
        [0x6b; 32]
    );
    assert!(graffiti_bytes("0xzz").is_ok(), "short 0x text is text");
}

#[test]
fn eth2_slashing_strategy_is_complete_unless_minimal_is_named() {
    let eth2 = |extra: &str| {
        format!("{DEV}\n[eth2]\naddress = \"127.0.0.1:9000\"\nauth = \"none\"\n{extra}\n")
    };
    let c = parse(&eth2("")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.eth2.unwrap().slashing_strategy,
        SlashingStrategy::Complete
    );
    let c = parse(&eth2("slashing_strategy = \"minimal\"")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.eth2.unwrap().slashing_strategy, SlashingStrategy::Minimal);
    let err = parse(&eth2("slashing_strategy = \"lenient\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("slashing_strategy"), "{err}");
}
