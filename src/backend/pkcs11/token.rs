//! One live connection to the token: the library initialised, the slot found by label, a
//! long-lived session holding the user login, idle signing sessions, and the keys found.
//!
//! Dropping a [`Connection`] closes its sessions and then calls `C_Finalize`, so a new
//! connection (after the token came back) starts from a clean library state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyguard_chain::{KeyId, PublicKey, Scheme, SigningPayload};

use super::der::{self, Curve};
use super::Pkcs11Error;
use crate::backend::KeyInfo;

/// What is needed to connect: resolved from `[keystore.pkcs11]` (the PIN already read).
pub struct TokenSettings {
    pub(crate) library: PathBuf,
    pub(crate) token_label: String,
    pub(crate) pin: AuthPin,
    pub(crate) allow_extractable: bool,
    /// Labels that must exist; empty (and no `by_ckid`) means every usable key.
    pub(crate) wanted: Vec<KeyId>,
    /// Keys chosen by `CKA_ID`, with the key id keyguard gives them.
    pub(crate) by_ckid: Vec<(KeyId, Vec<u8>)>,
}

impl TokenSettings {
    /// The key id a private key gets, and whether the config named it; `None` if unnamed
    /// while the config names keys.
    fn name_of(&self, label: &str, ckid: &[u8]) -> Option<(Result<KeyId, String>, bool)> {
        if let Some((id, _)) = self.by_ckid.iter().find(|(_, c)| c == ckid) {
            return Some((Ok(id.clone()), true));
        }
        let listed = self.wanted.iter().any(|w| w.as_str() == label);
        let everything = self.wanted.is_empty() && self.by_ckid.is_empty();
        if !(listed || everything) {
            return None;
        }
        Some((KeyId::new(label).map_err(|e| e.to_string()), listed))
    }
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("library", &self.library)
            .field("token_label", &self.token_label)
            .field("allow_extractable", &self.allow_extractable)
            .field("wanted", &self.wanted)
            .field("by_ckid", &self.by_ckid)
            .finish_non_exhaustive()
    }
}

/// A key on the token: its handle in this connection and its public half.
pub(crate) struct TokenKey {
    pub(crate) info: KeyInfo,
    handle: ObjectHandle,
}

/// The initialised library; finalized when dropped (after every session is gone).
struct Library(Option<Pkcs11>);

impl Drop for Library {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            if let Err(e) = ctx.finalize() {
                tracing::warn!(error = %e, "pkcs11: C_Finalize failed");
            }
        }
    }
}

/// A logged-in connection. Field order matters: sessions close before the library finalizes.
pub(crate) struct Connection {
    pub(crate) keys: BTreeMap<KeyId, TokenKey>,
    idle: Mutex<Vec<Session>>,
    /// Never used for signing: it exists so the login survives while signing sessions come
    /// and go (closing a token's last session logs the user out).
    login: Mutex<Session>,
    slot: Slot,
    library: Library,
}

fn ck(operation: &'static str) -> impl FnOnce(CkError) -> Pkcs11Error {
    move |source| Pkcs11Error::Token { operation, source }
}

impl Connection {
    /// Loads and initialises the library, finds the token, logs in and (if `discover_keys`)
    /// finds the keys, applying `wanted` and the extractability rule.
    pub(crate) fn open(settings: &TokenSettings, discover_keys: bool) -> Result<Self, Pkcs11Error> {
        let lib_err = |reason: String| Pkcs11Error::Library {
            path: settings.library.clone(),
            reason,
        };
        let ctx = Pkcs11::new(&settings.library).map_err(|e| lib_err(e.to_string()))?;
        // OS locking: sessions are used from several threads at once.
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                return Err(lib_err(
                    "already initialised in this process (one PKCS#11 backend per library)".into(),
                ))
            }
            Err(e) => return Err(lib_err(e.to_string())),
        }
        let library = Library(Some(ctx));
        let ctx = library
            .0
            .as_ref()
            .ok_or_else(|| lib_err("not loaded".into()))?;
        let slot = find_slot(ctx, &settings.token_label)?;
        let login = ctx.open_ro_session(slot).map_err(ck("C_OpenSession"))?;
        log_in(&login, &settings.pin, &settings.token_label)?;
        let keys = if discover_keys {
            discover(&login, settings)?
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            keys,
            idle: Mutex::new(Vec::new()),
            login: Mutex::new(login),
            slot,
            library,
        })
    }

    fn ctx(&self) -> Result<&Pkcs11, Pkcs11Error> {
        self.library.0.as_ref().ok_or(Pkcs11Error::Token {
            operation: "C_Initialize",
            source: CkError::Pkcs11(RvError::CryptokiNotInitialized, Function::Initialize),
        })
    }

    /// Logs the user in again (the token dropped the login, e.g. after its own reset).
    pub(crate) fn relogin(&self, pin: &AuthPin, token: &str) -> Result<(), Pkcs11Error> {
        let session = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        log_in(&session, pin, token)
    }

    /// Signs on one of this connection's sessions; raw token output, not yet checked.
    pub(crate) fn sign_raw(
        &self,
        key: &KeyId,
        payload: &SigningPayload,
    ) -> Result<Vec<u8>, CkError> {
        let handle = self
            .keys
            .get(key)
            .map(|k| k.handle)
            .ok_or(CkError::Pkcs11(RvError::KeyHandleInvalid, Function::Sign))?;
        // Tokens have no BIP340 mechanism: HSM keys are usable for ECDSA only (non-HD keys).
        if matches!(payload, SigningPayload::TaprootKeySpend { .. }) {
            return Err(CkError::Pkcs11(RvError::MechanismInvalid, Function::Sign));
        }
        let session = self.take_session()?;
        // Mechanism is not Send, so it is built here on the thread that signs.
        let result = match payload {
            SigningPayload::Secp256k1Prehash(digest) => {
                session.sign(&Mechanism::Ecdsa, handle, digest)
            }
            SigningPayload::Ed25519Message(message) => session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                handle,
                message,
            ),
            SigningPayload::TaprootKeySpend { .. } => {
                Err(CkError::Pkcs11(RvError::MechanismInvalid, Function::Sign))
            }
        };
        // A session whose operation failed may be left mid-operation; close it instead of
        // handing it to the next request.
        if result.is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(session);
        }
        result
    }

    fn take_session(&self) -> Result<Session, CkError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(s) => Ok(s),
            None => match &self.library.0 {
                Some(ctx) => ctx.open_ro_session(self.slot),
                None => Err(CkError::Pkcs11(
                    RvError::CryptokiNotInitialized,
                    Function::OpenSession,
                )),
            },
        }
    }

    /// Creates a key pair on the token: private half sensitive, never extractable, on the
    /// token (not a session object); returns its public info after reading it back.
    pub(crate) fn generate(
        &self,
        settings: &TokenSettings,
        id: &KeyId,
        scheme: Scheme,
    ) -> Result<KeyInfo, Pkcs11Error> {
        let session = self
            .ctx()?
            .open_rw_session(self.slot)
            .map_err(ck("C_OpenSession"))?;
        let label = id.as_str().as_bytes().to_vec();
        let taken = session
            .find_objects(&[Attribute::Label(label.clone())])
            .map_err(ck("C_FindObjects"))?;
        if !taken.is_empty() {
            return Err(Pkcs11Error::KeyExists(id.clone()));
        }
        let mut ckid = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut ckid);
        let (mechanism, key_type, params) = match scheme {
            Scheme::Secp256k1 => (Mechanism::EccKeyPairGen, KeyType::EC, der::SECP256K1_OID),
            Scheme::Ed25519 => (
                Mechanism::EccEdwardsKeyPairGen,
                KeyType::EC_EDWARDS,
                der::ED25519_OID,
            ),
        };
        let public = |params: &[u8]| {
            vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
                Attribute::Label(label.clone()),
                Attribute::Id(ckid.to_vec()),
            ]
        };
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::KeyType(key_type),
            Attribute::Label(label.clone()),
            Attribute::Id(ckid.to_vec()),
        ];
        let generated = match session.generate_key_pair(&mechanism, &public(params), &private) {
            // Older tokens (SoftHSM2 among them) know Ed25519 only by the curve name.
            Err(CkError::Pkcs11(
                RvError::CurveNotSupported
                | RvError::AttributeValueInvalid
                | RvError::TemplateInconsistent
                | RvError::DomainParamsInvalid,
                _,
            )) if scheme == Scheme::Ed25519 => {
                session.generate_key_pair(&mechanism, &public(der::ED25519_NAME), &private)
            }
            other => other,
        };
        let (_, private_handle) = generated.map_err(ck("C_GenerateKeyPair"))?;
        let key = load_key(&session, private_handle, settings)?.ok_or_else(|| {
            Pkcs11Error::UnsupportedKey {
                label: id.to_string(),
                reason: "the generated key could not be read back".into(),
            }
        })?;
        Ok(key.info)
    }
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, Pkcs11Error> {
    let mut found = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))? {
        let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
        if info.label().trim_end() == label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(Pkcs11Error::TokenNotFound(label.to_string())),
        _ => Err(Pkcs11Error::TokenAmbiguous(label.to_string())),
    }
}

fn log_in(session: &Session, pin: &AuthPin, token: &str) -> Result<(), Pkcs11Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => Err(Pkcs11Error::WrongPin(token.to_string())),
        Err(CkError::Pkcs11(RvError::PinLocked | RvError::PinExpired, _)) => {
            Err(Pkcs11Error::PinLocked(token.to_string()))
        }
        Err(e) => Err(Pkcs11Error::Token {
            operation: "C_Login",
            source: e,
        }),
    }
}

/// Every usable private key (or the wanted ones), each with its public key.
fn discover(
    session: &Session,
    settings: &TokenSettings,
) -> Result<BTreeMap<KeyId, TokenKey>, Pkcs11Error> {
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .map_err(ck("C_FindObjects"))?;
    let mut keys = BTreeMap::new();
    for handle in handles {
        let Some(key) = load_key(session, handle, settings)? else {
            continue;
        };
        let id = key.info.id.clone();
        if keys.insert(id.clone(), key).is_some() {
            return Err(Pkcs11Error::DuplicateLabel(id.to_string()));
        }
    }
    for wanted in &settings.wanted {
        if !keys.contains_key(wanted) {
            return Err(Pkcs11Error::MissingKey(wanted.to_string()));
        }
    }
    for (wanted, ckid) in &settings.by_ckid {
        if !keys.contains_key(wanted) {
            return Err(Pkcs11Error::MissingKeyId {
                key: wanted.to_string(),
                ckid: hex::encode(ckid),
            });
        }
    }
    Ok(keys)
}

/// One private key: `Ok(None)` if it is not one keyguard was asked to use (no label, a label
/// that is no key id, unsupported curve — skipped when discovering, an error when listed).
fn load_key(
    session: &Session,
    handle: ObjectHandle,
    settings: &TokenSettings,
) -> Result<Option<TokenKey>, Pkcs11Error> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .map_err(ck("C_GetAttributeValue"))?;
    let mut key = PrivateKeyAttrs::default();
    for a in attrs {
        match a {
            Attribute::Label(l) => key.label = Some(String::from_utf8_lossy(&l).into_owned()),
            Attribute::Id(i) => key.ckid = i,
            Attribute::KeyType(t) => key.key_type = Some(t),
            Attribute::EcParams(p) => key.ec_params = p,
            Attribute::Sensitive(s) => key.sensitive = Some(s),
            Attribute::Extractable(e) => key.extractable = Some(e),
            _ => {}
        }
    }
    let label = key.label.clone().unwrap_or_default();
    let Some((id, listed)) = settings.name_of(&label, &key.ckid) else {
        return Ok(None);
    };
    let skip = |reason: String| {
        if listed {
            Err(Pkcs11Error::UnsupportedKey {
                label: label.clone(),
                reason,
            })
        } else {
            tracing::warn!(label = %label, %reason, "pkcs11: private key skipped");
            Ok(None)
        }
    };
    let Ok(id) = id else {
        return skip("its label is not a valid key id".into());
    };
    let scheme = match (key.key_type, der::curve_of(&key.ec_params)) {
        (Some(KeyType::EC), Some(Curve::Secp256k1)) => Scheme::Secp256k1,
        (Some(KeyType::EC_EDWARDS), Some(Curve::Ed25519)) => Scheme::Ed25519,
        (_, Some(Curve::P256)) => return skip("P-256 keys are not used by any chain yet".into()),
        _ => return skip("not a secp256k1 or Ed25519 key".into()),
    };
    // Checked for discovered keys too: a copyable key on the token is a finding, not noise.
    if !settings.allow_extractable {
        if key.extractable != Some(false) {
            return Err(Pkcs11Error::KeyRefused {
                label,
                reason: "CKA_EXTRACTABLE is true (set allow_extractable = true to accept it)",
            });
        }
        if key.sensitive != Some(true) {
            return Err(Pkcs11Error::KeyRefused {
                label,
                reason: "CKA_SENSITIVE is false (set allow_extractable = true to accept it)",
            });
        }
    }
    let public_key = read_public_key(session, &key, &id, scheme)?;
    Ok(Some(TokenKey {
        info: KeyInfo { id, public_key },
        handle,
    }))
}

#[derive(Default)]
struct PrivateKeyAttrs {
    label: Option<String>,
    ckid: Vec<u8>,
    key_type: Option<KeyType>,
    ec_params: Vec<u8>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
}

/// The matching public key object (same CKA_ID, else same label): PKCS#11 private EC keys do
/// not carry the point themselves.
fn read_public_key(
    session: &Session,
    private: &PrivateKeyAttrs,
    id: &KeyId,
    scheme: Scheme,
) -> Result<PublicKey, Pkcs11Error> {
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if private.ckid.is_empty() {
        template.push(Attribute::Label(id.as_str().as_bytes().to_vec()));
    } else {
        template.push(Attribute::Id(private.ckid.clone()));
    }
    let missing = |reason: &str| Pkcs11Error::UnsupportedKey {
        label: id.to_string(),
        reason: reason.to_string(),
    };
    let found = session
        .find_objects(&template)
        .map_err(ck("C_FindObjects"))?;
    let [handle] = found.as_slice() else {
        return Err(missing(if found.is_empty() {
            "no public key object with its CKA_ID/label"
        } else {
            "several public key objects share its CKA_ID/label"
        }));
    };
    let attrs = session
        .get_attributes(*handle, &[AttributeType::EcPoint, AttributeType::EcParams])
        .map_err(ck("C_GetAttributeValue"))?;
    let mut point = None;
    let mut params = None;
    for a in attrs {
        match a {
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::EcParams(p) => params = Some(p),
            _ => {}
        }
    }
    if params.as_deref() != Some(private.ec_params.as_slice())
        && params.as_deref().and_then(der::curve_of) != der::curve_of(&private.ec_params)
    {
        return Err(missing(
            "public key is on another curve than the private key",
        ));
    }
    let point = point.ok_or_else(|| missing("public key has no CKA_EC_POINT"))?;
    match scheme {
        Scheme::Secp256k1 => der::secp256k1_point(&point).map(PublicKey::Secp256k1),
        Scheme::Ed25519 => der::ed25519_point(&point).map(PublicKey::Ed25519),
    }
    .ok_or_else(|| missing("CKA_EC_POINT is not a valid point"))
}
