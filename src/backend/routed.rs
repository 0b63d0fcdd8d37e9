//! One keyguard, keys in several backends: the primary (software keystore or PKCS#11 token)
//! and cloud key services, each key in exactly one. The guard sees one [`KeyBackend`]; this
//! sends each call to the backend that holds the key.
//!
//! Why refuse a key id held by two backends at start: which one signed would otherwise depend
//! on lookup order, and a policy written for one key would govern another.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keyguard_bitcoin::bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use keyguard_bitcoin::bitcoin::NetworkKind;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};

use super::{BackendError, KeyBackend, KeyInfo};

/// The primary backend plus cloud backends, routed by key id.
pub struct Routed {
    primary: Arc<dyn KeyBackend>,
    others: Vec<Arc<dyn KeyBackend>>,
    /// Key id -> index into `others`; keys not here belong to the primary.
    route: BTreeMap<KeyId, usize>,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("primary", &self.primary.name())
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Routed {
    /// Combines `primary` with `others`; `Err` names a key id held by two backends.
    pub fn new(
        primary: Arc<dyn KeyBackend>,
        others: Vec<Arc<dyn KeyBackend>>,
    ) -> Result<Self, String> {
        let mut owner: BTreeMap<KeyId, &'static str> = primary
            .keys()
            .into_iter()
            .map(|k| (k.id, primary.name()))
            .chain(
                primary
                    .seeds()
                    .into_iter()
                    .map(|(id, _)| (id, primary.name())),
            )
            .collect();
        let mut route = BTreeMap::new();
        for (i, backend) in others.iter().enumerate() {
            for key in backend.keys() {
                if let Some(first) = owner.insert(key.id.clone(), backend.name()) {
                    return Err(format!(
                        "key {} is in both the {first} and the {} backend; a key id must name one key",
                        key.id,
                        backend.name()
                    ));
                }
                route.insert(key.id, i);
            }
        }
        Ok(Self {
            primary,
            others,
            route,
        })
    }

    fn backend(&self, key: &KeyId) -> &dyn KeyBackend {
        match self.route.get(key) {
            Some(&i) => self.others[i].as_ref(),
            None => self.primary.as_ref(),
        }
    }

    /// Every backend with the keys it holds, primary first (for start-up lines and metrics).
    pub fn backends(&self) -> impl Iterator<Item = &dyn KeyBackend> {
        std::iter::once(self.primary.as_ref()).chain(self.others.iter().map(|b| b.as_ref()))
    }
}

#[async_trait]
impl KeyBackend for Routed {
    fn name(&self) -> &'static str {
        self.primary.name()
    }

    fn keys(&self) -> Vec<KeyInfo> {
        let mut keys = self.primary.keys();
        keys.extend(self.others.iter().flat_map(|b| b.keys()));
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    fn backend_of(&self, key: &KeyId) -> &'static str {
        self.backend(key).name()
    }

    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        self.backend(key).public_key(key)
    }

    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        self.backend(key).sign(key, payload).await
    }

    fn seeds(&self) -> Vec<(KeyId, Fingerprint)> {
        self.primary.seeds()
    }

    fn account_xpub(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        network: NetworkKind,
    ) -> Result<Xpub, BackendError> {
        self.backend(key).account_xpub(key, path, network)
    }

    async fn sign_derived(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        payload: &SigningPayload,
    ) -> Result<Signature, BackendError> {
        self.backend(key).sign_derived(key, path, payload).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyguard_chain::Scheme;

    /// A backend holding fixed keys; signing answers with its name in the error.
    struct Fixed(&'static str, Vec<&'static str>);

    #[async_trait]
    impl KeyBackend for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn keys(&self) -> Vec<KeyInfo> {
            self.1
                .iter()
                .map(|id| KeyInfo {
                    id: KeyId::new(*id).unwrap(),
                    public_key: PublicKey::Ed25519([1; 32]),
                })
                .collect()
        }
        fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
            self.keys()
                .into_iter()
                .find(|k| &k.id == key)
                .map(|k| k.public_key)
                .ok_or_else(|| BackendError::UnknownKey(key.clone()))
        }
        async fn sign(&self, key: &KeyId, _: &SigningPayload) -> Result<Signature, BackendError> {
            Err(BackendError::Unavailable {
                backend: self.0,
                reason: key.to_string(),
            })
        }
    }

    #[tokio::test]
    async fn each_key_goes_to_its_backend() {
        let r = Routed::new(
            Arc::new(Fixed("software", vec!["a"])),
            vec![Arc::new(Fixed("aws-kms", vec!["b"]))],
        )
        .unwrap();
        let payload = SigningPayload::Ed25519Message(vec![1]);
        for (key, backend) in [("a", "software"), ("b", "aws-kms"), ("nope", "software")] {
            match r.sign(&KeyId::new(key).unwrap(), &payload).await {
                Err(BackendError::Unavailable { backend: b, .. }) => assert_eq!(b, backend),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(r.keys().len(), 2);
        assert_eq!(r.keys()[1].scheme(), Scheme::Ed25519);
        assert!(r.public_key(&KeyId::new("nope").unwrap()).is_err());
    }

    #[test]
    fn a_key_in_two_backends_is_refused() {
        let err = Routed::new(
            Arc::new(Fixed("software", vec!["a"])),
            vec![Arc::new(Fixed("aws-kms", vec!["a"]))],
        )
        .unwrap_err();
        assert!(
            err.contains("key a is in both the software and the aws-kms backend"),
            "{err}"
        );
    }
}
