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
