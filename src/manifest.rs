//! Just enough of the OCI and Docker manifest formats to walk an image: which child
//! manifests, config and layers it needs. Raw bytes are always kept and stored as they
//! came; these types are for reading fields, never for re-serialising (that would change
//! the digest).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// Annotation carrying a tag in an OCI image layout's index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// On a platform-cut index, and on its index.json entry: the upstream index's digest.
pub const UPSTREAM_DIGEST: &str = "io.static-registry.upstream.digest";
/// On the index.json entry of a platform-filtered tag: the platforms asked for, so a
/// change of list fetches again.
pub const KEPT_PLATFORMS: &str = "io.static-registry.platforms";
/// On every index.json entry fetch writes: the repository it came from
/// (`registry/repository`), so a later fetch of another source into the same stored name
/// is refused instead of merged.
pub const SOURCE: &str = "io.static-registry.source";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of a known shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "manifest uses the deprecated Docker schema 1 format ({0}); it cannot be stored by digest. Ask the publisher for a schema 2 or OCI image"
    )]
    Schema1(String),
    #[error("unsupported manifest media type {0:?}: expected an OCI or Docker v2 image or index")]
    UnknownMediaType(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// Foreign (non-distributable) layers live elsewhere, named by `urls`; registries
    /// usually don't hold them.
    pub fn is_foreign(&self) -> bool {
        !self.urls.is_empty()
            || self.media_type.contains(".foreign.")
            || self.media_type.contains(".nondistributable.")
    }
}

/// What a manifest points at.
#[derive(Debug, Clone)]
pub enum Kind {
    /// OCI index or Docker manifest list: child manifests.
    Index(Vec<Descriptor>),
    /// Image (or artifact) manifest: its config and layers.
    Image {
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
    },
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: Kind,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// A manifest as one value, made where its bytes arrive: the bytes, the digest they hash
/// to, and their parsed form. Everything downstream takes this rather than hashing or
/// parsing the bytes again.
#[derive(Debug, Clone)]
pub struct Verified {
    pub digest: Digest,
    pub bytes: Bytes,
    pub manifest: Manifest,
}

impl Verified {
    /// Hash and parse `bytes` (see [`Manifest::parse`] for `content_type`).
    pub fn new(bytes: Bytes, content_type: Option<&str>) -> Result<Verified, ManifestError> {
        let manifest = Manifest::parse(&bytes, content_type)?;
        Ok(Verified {
            digest: Digest::sha256_of(&bytes),
            bytes,
            manifest,
        })
    }

    pub fn media_type(&self) -> &str {
        &self.manifest.media_type
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parse raw manifest bytes. The media type is the document's own `mediaType` field,
    /// else the Content-Type the registry sent, else inferred from the shape (OCI allows
    /// the field to be absent).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: Raw = serde_json::from_slice(bytes)?;
        let declared = raw
            .media_type
            .as_deref()
            .or(content_type)
            .map(str::to_owned);
        if raw.schema_version == Some(1)
            || declared
                .as_deref()
                .is_some_and(|m| m.starts_with(DOCKER_SCHEMA1))
        {
            return Err(ManifestError::Schema1(
                declared.unwrap_or_else(|| "schemaVersion 1".into()),
            ));
        }
        let media_type = match declared {
            Some(m) => m,
            None if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        };
        let kind = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => Kind::Index(raw.manifests.unwrap_or_default()),
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image {
                config: Box::new(raw.config.ok_or_else(|| {
                    <serde_json::Error as serde::de::Error>::missing_field("config")
                })?),
                layers: raw.layers.unwrap_or_default(),
            },
            other => return Err(ManifestError::UnknownMediaType(other.to_owned())),
        };
        Ok(Manifest {
            media_type,
            kind,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }

    /// This manifest's entry in its subject's referrers index: artifactType falls back
    /// to the config's media type, as the distribution spec says.
    pub fn referrer_descriptor(&self, digest: &Digest, size: u64) -> Descriptor {
        let artifact_type = self.artifact_type.clone().or_else(|| match &self.kind {
            Kind::Image { config, .. } => Some(config.media_type.clone()),
            Kind::Index(_) => None,
        });
        Descriptor {
            media_type: self.media_type.clone(),
            digest: digest.clone(),
            size,
            urls: Vec::new(),
            platform: None,
            artifact_type,
            annotations: self.annotations.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn image_manifest_without_media_type_field_is_oci() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D1}","size":3,"urls":["https://example.invalid/l"]}}]}}"#
        );
        let m = Manifest::parse(json.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        let Kind::Image { layers, .. } = m.kind else {
            panic!("not an image")
        };
        assert!(layers[0].is_foreign());
    }

    #[test]
    fn index_uses_content_type_when_field_absent() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":5,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let m = Manifest::parse(json.as_bytes(), Some(DOCKER_LIST)).unwrap();
        assert_eq!(m.media_type, DOCKER_LIST);
        let Kind::Index(children) = m.kind else {
            panic!("not an index")
        };
        assert_eq!(
            children[0].platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
    }

    #[test]
    fn schema1_and_hostile_digests_are_refused() {
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::Schema1(_))
        ));
        let evil = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc","size":2}}"#;
        assert!(Manifest::parse(evil.as_bytes(), None).is_err());
    }
}
