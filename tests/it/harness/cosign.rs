//! Cosign key-based signatures made as cosign makes them, with the openssl CLI (an
//! implementation independent of the one under test): a simple-signing payload naming a
//! digest, signed over its bytes, as a layer of a signature manifest pushed under the
//! `sha256-<hex>.sig` tag or as a referrer of the image.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::json;

use super::fixtures::{OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use super::registry::Registry;
use super::require_bin;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyType {
    EcdsaP256,
    Ed25519,
    Rsa,
}

/// A key pair in PEM files.
pub struct Key {
    pub kind: KeyType,
    private: PathBuf,
    /// The public key, as `--verify-key` takes it.
    pub public: PathBuf,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new(require_bin("openssl", "openssl"))
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Key {
    /// A new key pair of `kind`, written to `dir/<name>.key` and `dir/<name>.pub`.
    pub fn generate(dir: &Path, name: &str, kind: KeyType) -> Key {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let p = private.to_str().unwrap();
        match kind {
            KeyType::EcdsaP256 => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p,
            ]),
            KeyType::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
            KeyType::Rsa => openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                p,
            ]),
        };
        openssl(&[
            "pkey",
            "-in",
            p,
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        Key {
            kind,
            private,
            public,
        }
    }

    pub fn public_arg(&self) -> &str {
        self.public.to_str().unwrap()
    }

    /// The signature over `payload`, as cosign makes it with this key: DER ECDSA and
    /// PKCS #1 v1.5 RSA over SHA-256, pure Ed25519.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("payload");
        std::fs::write(&input, payload).unwrap();
        let (key, input) = (self.private.to_str().unwrap(), input.to_str().unwrap());
        match self.kind {
            KeyType::Ed25519 => {
                openssl(&["pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", input])
            }
            _ => openssl(&["dgst", "-sha256", "-sign", key, input]),
        }
    }
}

/// cosign's payload for `digest` in `repo`.
pub fn payload(repo: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": repo},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// One layer of a signature manifest: a payload and the (base64) signature over it.
pub struct Layer {
    pub payload: Vec<u8>,
    pub signature: String,
}

impl Layer {
    /// `key`'s signature of a payload naming `named`.
    pub fn signed(key: &Key, repo: &str, named: &str) -> Layer {
        let payload = payload(repo, named);
        let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
        Layer { payload, signature }
    }
}

/// Where a signature manifest goes.
#[derive(Clone, Copy, PartialEq)]
pub enum Placement {
    /// cosign's default: the tag `sha256-<hex>.sig`.
    Tag,
    /// A referrer (`subject`, artifact type): pushed by digest, listed in the
    /// referrers fallback tag `sha256-<hex>` (docker-registry 2.8 has no referrers API).
    Referrer,
}

/// Push a signature manifest of `layers` for manifest `subject` (`media_type`,
/// `size`) in `repo`; its digest.
pub async fn push_signature(
    reg: &Registry,
    repo: &str,
    subject: (&str, &str, usize),
    layers: &[Layer],
    placement: Placement,
) -> String {
    let (digest, media_type, size) = subject;
    let mut descriptors = Vec::new();
    for l in layers {
        let d = reg.push_blob(repo, &l.payload).await;
        descriptors.push(json!({
            "mediaType": SIMPLE_SIGNING,
            "digest": d,
            "size": l.payload.len(),
            "annotations": {SIGNATURE_ANNOTATION: l.signature},
        }));
    }
    let tag = digest.replacen(':', "-", 1);
    match placement {
        Placement::Tag => {
            let config = br#"{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
            let config_digest = reg.push_blob(repo, config).await;
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
                "layers": descriptors,
            }))
            .unwrap();
            reg.push_manifest(repo, &format!("{tag}.sig"), OCI_MANIFEST, &manifest)
                .await
        }
        Placement::Referrer => {
            let empty = b"{}";
            let empty_digest = reg.push_blob(repo, empty).await;
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": SIGNATURE_ARTIFACT,
                "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2},
                "layers": descriptors,
                "subject": {"mediaType": media_type, "digest": digest, "size": size},
            }))
            .unwrap();
            let d = reg
                .push_manifest(
                    repo,
                    &super::sha256_digest(&manifest),
                    OCI_MANIFEST,
                    &manifest,
                )
                .await;
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": manifest.len(),
                    "artifactType": SIGNATURE_ARTIFACT,
                }],
            }))
            .unwrap();
            reg.push_manifest(repo, &tag, OCI_INDEX, &index).await;
            d
        }
    }
}
