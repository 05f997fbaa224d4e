//! Cosign key-based signatures, and the policy saying whose are trusted.
//!
//! A cosign signature is a plain signature over the bytes of a "simple signing" payload,
//! a small JSON document naming the signed manifest's digest in
//! `critical.image.docker-manifest-digest`. The payload is a layer of a signature
//! manifest (media type [`SIMPLE_SIGNING`]) and the signature, base64, is that layer's
//! [`SIGNATURE_ANNOTATION`]. The signature manifest is found under the tag
//! `sha256-<hex>.sig`, or as a referrer of the image (artifact type
//! [`SIGNATURE_ARTIFACT`]); `copy::signed` finds them, this module decides.
//!
//! Keys are PEM public keys (`-----BEGIN PUBLIC KEY-----`, as `cosign generate-key-pair`
//! and openssl write them): ECDSA P-256 (DER signature over SHA-256, cosign's default),
//! Ed25519 (pure), and RSA 2048-8192 (PKCS #1 v1.5 over SHA-256), which is how cosign
//! verifies each. Keyless signatures (Fulcio certificates, Rekor entries) are not read.
//!
//! The verifying code is aws-lc-rs, which rustls already builds into this binary.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    VerificationAlgorithm,
};
use base64::Engine as _;
use bytes::Bytes;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use crate::reference::Digest;

/// The media type of the payload layer of a cosign signature manifest.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation of that layer holding the signature, base64.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The annotation of a keyless signature's layer: the signer's Fulcio certificate.
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The artifact type of a cosign signature manifest stored as a referrer.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// `critical.type` of a container image signature's payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// A payload is a few hundred bytes; larger ones are not read.
pub const MAX_PAYLOAD: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds no PEM public key: expected \"-----BEGIN PUBLIC KEY-----\" (as `cosign generate-key-pair` writes cosign.pub){found}"
    )]
    NotPem { path: String, found: String },
    #[error("{path}: the public key is none of ECDSA P-256, Ed25519 or RSA of 2048 to 8192 bits")]
    Unsupported { path: String },
}

/// The kinds of key a signature is checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Ed25519,
    Rsa,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Rsa => "RSA",
        })
    }
}

/// A public key signatures are checked against, named by the file it came from.
pub struct TrustedKey {
    pub name: String,
    pub kind: KeyKind,
    key: ParsedPublicKey,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind)
    }
}

/// Keys are equal when their encodings are.
impl PartialEq for TrustedKey {
    fn eq(&self, other: &TrustedKey) -> bool {
        self.key.as_ref() == other.key.as_ref()
    }
}

impl Eq for TrustedKey {}

impl TrustedKey {
    /// The PEM public key in the file at `path`.
    pub fn load(path: &Path) -> Result<TrustedKey, KeyError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: name.clone(),
            source,
        })?;
        TrustedKey::from_pem(name, &pem)
    }

    /// The first PEM public key in `pem`; `name` names it in messages.
    pub fn from_pem(name: String, pem: &[u8]) -> Result<TrustedKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| KeyError::NotPem {
            found: match String::from_utf8_lossy(pem)
                .lines()
                .find(|l| l.starts_with("-----BEGIN"))
            {
                Some(begin) if begin.contains("PRIVATE") => {
                    format!("; it holds a private key ({begin}): give the public one")
                }
                Some(begin) => format!("; it holds {begin}"),
                None => format!(" ({e:?})"),
            },
            path: name.clone(),
        })?;
        let kinds: [(KeyKind, &'static dyn VerificationAlgorithm); 3] = [
            (KeyKind::EcdsaP256, &ECDSA_P256_SHA256_ASN1),
            (KeyKind::Ed25519, &ED25519),
            (KeyKind::Rsa, &RSA_PKCS1_2048_8192_SHA256),
        ];
        kinds
            .into_iter()
            .find_map(|(kind, alg)| {
                let key = ParsedPublicKey::new(alg, der.as_ref()).ok()?;
                Some(TrustedKey {
                    name: name.clone(),
                    kind,
                    key,
                })
            })
            .ok_or(KeyError::Unsupported { path: name })
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(payload, signature).is_ok()
    }
}

/// How many of the policy's keys must have signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Require {
    /// One valid signature by any of the keys.
    #[default]
    Any,
    /// A valid signature by every key.
    All,
}

impl std::str::FromStr for Require {
    type Err = String;
    fn from_str(s: &str) -> Result<Require, String> {
        match s {
            "any" => Ok(Require::Any),
            "all" => Ok(Require::All),
            other => Err(format!(
                "{other:?} is not a requirement: give `any` (one trusted key's signature is enough) or `all` (every key must have signed)"
            )),
        }
    }
}

/// Only images signed by these keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub keys: Vec<Arc<TrustedKey>>,
    pub require: Require,
}

/// One signature found for an image: where it was (for messages), and its payload and
/// base64 signature, or why they could not be read.
#[derive(Debug)]
pub struct Candidate {
    pub from: String,
    pub content: Result<Signed, String>,
}

#[derive(Debug)]
pub struct Signed {
    /// The payload's bytes, checked against its descriptor's digest by the finder.
    pub payload: Bytes,
    /// The layer's [`SIGNATURE_ANNOTATION`].
    pub signature: String,
    /// The layer carries a certificate: a keyless signature, made with a key nobody
    /// holds any more.
    pub keyless: bool,
}

/// Why an image was refused: one reason per signature looked at, or that there was none.
#[derive(Debug, thiserror::Error)]
#[error("{}", reasons.join("; "))]
pub struct Refused {
    pub reasons: Vec<String>,
}

/// The keys whose signatures held, in the policy's order.
#[derive(Debug)]
pub struct Passed {
    pub keys: Vec<String>,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: PayloadImage,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

impl Policy {
    /// Whether the signatures `found` for manifest `digest` satisfy the policy: a
    /// signature counts for a key when it verifies with that key over its payload and
    /// the payload names `digest`.
    pub fn check(&self, digest: &Digest, found: &[Candidate]) -> Result<Passed, Refused> {
        let mut reasons = Vec::new();
        if found.is_empty() {
            reasons.push(format!(
                "no cosign signature: no tag {}.sig, and none among its referrers",
                crate::copy::fallback_tag(digest)
            ));
        }
        let mut signed = vec![false; self.keys.len()];
        for c in found {
            let signed_now = match &c.content {
                Ok(s) => self.one(digest, s),
                Err(why) => Err(why.clone()),
            };
            match signed_now {
                Ok(keys) => keys.into_iter().for_each(|k| signed[k] = true),
                Err(why) => reasons.push(format!("{}: {why}", c.from)),
            }
        }
        let missing: Vec<&str> = self
            .keys
            .iter()
            .zip(&signed)
            .filter(|(_, s)| !**s)
            .map(|(k, _)| k.name.as_str())
            .collect();
        let passed = match self.require {
            Require::Any => missing.len() < self.keys.len(),
            Require::All => missing.is_empty(),
        };
        if passed {
            let keys = self.keys.iter().zip(&signed).filter(|(_, s)| **s);
            return Ok(Passed {
                keys: keys.map(|(k, _)| k.name.clone()).collect(),
            });
        }
        if self.require == Require::All && missing.len() < self.keys.len() {
            reasons.push(format!(
                "not signed by {} (`require: all` asks every key)",
                missing.join(", ")
            ));
        }
        Err(Refused { reasons })
    }

    /// The keys (by index) that signed `s` over a payload naming `digest`.
    fn one(&self, digest: &Digest, s: &Signed) -> Result<Vec<usize>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.signature.trim())
            .map_err(|e| {
                format!(
                    "malformed signature: the {SIGNATURE_ANNOTATION} annotation is not base64 ({e})"
                )
            })?;
        let keys: Vec<usize> = (0..self.keys.len())
            .filter(|k| self.keys[*k].verifies(&s.payload, &raw))
            .collect();
        if keys.is_empty() && s.keyless {
            return Err(
                "a keyless signature (Fulcio certificate): not verified; only \
                 signatures made with a trusted key count"
                    .to_owned(),
            );
        }
        if keys.is_empty() {
            let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
            return Err(format!(
                "signed by another key: the signature verifies with none of {}",
                names.join(", ")
            ));
        }
        let payload: Payload = serde_json::from_slice(&s.payload).map_err(|e| {
            format!("malformed payload: not a cosign simple-signing document ({e})")
        })?;
        if payload.critical.kind != PAYLOAD_TYPE {
            return Err(format!(
                "malformed payload: its type is {:?}, not {PAYLOAD_TYPE:?}",
                payload.critical.kind
            ));
        }
        if payload.critical.image.digest != digest.to_string() {
            return Err(format!(
                "the signed payload names {}, not {digest}",
                payload.critical.image.digest
            ));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair,
    };

    use super::*;

    fn pem(der: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n").into_bytes()
    }

    fn ecdsa() -> (EcdsaKeyPair, TrustedKey) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let der = pair.public_key().as_der().unwrap();
        let key = TrustedKey::from_pem("k.pub".into(), &pem(der.as_ref())).unwrap();
        (pair, key)
    }

    fn signed(pair: &EcdsaKeyPair, digest: &Digest) -> Candidate {
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{PAYLOAD_TYPE}"}},"optional":null}}"#
        );
        let sig = pair.sign(&SystemRandom::new(), payload.as_bytes()).unwrap();
        Candidate {
            from: "tag x.sig".into(),
            content: Ok(Signed {
                payload: Bytes::from(payload),
                signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
                keyless: false,
            }),
        }
    }

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn key_kinds_are_told_apart_and_other_curves_refused() {
        let (_, key) = ecdsa();
        assert_eq!(key.kind, KeyKind::EcdsaP256);
        let ed = Ed25519KeyPair::generate().unwrap();
        let der = ed.public_key().as_der().unwrap();
        let key = TrustedKey::from_pem("ed.pub".into(), &pem(der.as_ref())).unwrap();
        assert_eq!(key.kind, KeyKind::Ed25519);
        let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let der = p384.public_key().as_der().unwrap();
        let err = TrustedKey::from_pem("p384.pub".into(), &pem(der.as_ref())).unwrap_err();
        assert!(
            err.to_string()
                .contains("none of ECDSA P-256, Ed25519 or RSA"),
            "{err}"
        );
        let err = TrustedKey::from_pem("x".into(), b"hello").unwrap_err();
        assert!(err.to_string().contains("holds no PEM public key"), "{err}");
    }

    #[test]
    fn a_signature_counts_only_with_its_key_over_a_payload_naming_the_digest() {
        let (pair, key) = ecdsa();
        let (other_pair, other) = ecdsa();
        let policy = Policy {
            keys: vec![Arc::new(key)],
            require: Require::Any,
        };
        let passed = policy
            .check(&digest(1), &[signed(&pair, &digest(1))])
            .unwrap();
        assert_eq!(passed.keys, ["k.pub"]);
        let reasons =
            |found: &[Candidate]| policy.check(&digest(1), found).unwrap_err().to_string();
        assert!(reasons(&[]).contains("no cosign signature: no tag"));
        assert!(reasons(&[signed(&other_pair, &digest(1))]).contains("signed by another key"));
        let named = reasons(&[signed(&pair, &digest(2))]);
        assert!(
            named.contains(&format!("names {}, not {}", digest(2), digest(1))),
            "{named}"
        );
        // One good signature among bad ones is enough for `any`.
        let found = [signed(&other_pair, &digest(1)), signed(&pair, &digest(1))];
        assert!(policy.check(&digest(1), &found).is_ok());

        let both = Policy {
            keys: vec![policy.keys[0].clone(), Arc::new(other)],
            require: Require::All,
        };
        let err = both
            .check(&digest(1), &[signed(&pair, &digest(1))])
            .unwrap_err();
        assert!(err.to_string().contains("not signed by k.pub"), "{err}");
        let found = [signed(&pair, &digest(1)), signed(&other_pair, &digest(1))];
        assert_eq!(both.check(&digest(1), &found).unwrap().keys.len(), 2);
        assert!("most".parse::<Require>().is_err());
    }

    #[test]
    fn keyless_and_malformed_signatures_are_refused_with_their_own_reasons() {
        let (pair, key) = ecdsa();
        let (other_pair, _) = ecdsa();
        let policy = Policy {
            keys: vec![Arc::new(key)],
            require: Require::Any,
        };
        let refused = |c: Candidate| policy.check(&digest(1), &[c]).unwrap_err().to_string();
        let mut keyless = signed(&other_pair, &digest(1));
        if let Ok(s) = &mut keyless.content {
            s.keyless = true;
        }
        assert!(refused(keyless).contains("a keyless signature (Fulcio certificate)"));
        let mut garbled = signed(&pair, &digest(1));
        if let Ok(s) = &mut garbled.content {
            s.signature = "%%%".into();
        }
        assert!(refused(garbled).contains("malformed signature"));
        // A payload that is signed but is no simple-signing document.
        let payload = Bytes::from_static(b"{\"critical\": 1}");
        let sig = pair.sign(&SystemRandom::new(), &payload).unwrap();
        let odd = Candidate {
            from: "referrer x".into(),
            content: Ok(Signed {
                payload,
                signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
                keyless: false,
            }),
        };
        assert!(refused(odd).contains("malformed payload"));
    }
}
