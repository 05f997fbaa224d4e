//! What a sync-project editor needs to see of an upstream: its repositories (where the
//! registry lists them), a repository's tags through the `ls` filters, and what a tag is
//! (digest, media type, platforms, size).

use std::collections::BTreeMap;

use futures::future::join_all;
use serde::Serialize;

use crate::copy::registry::valid_tags;
use crate::manifest::Kind;
use crate::reference::{Digest, Reference};
use crate::registry::{Client, RegistryError};
use crate::report::Silent;
use crate::select::{self, TagSelector};

/// More platforms than any real index has; a bigger one is read no further.
const MAX_CHILDREN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(Box<RegistryError>),
}

impl From<RegistryError> for BrowseError {
    fn from(e: RegistryError) -> BrowseError {
        BrowseError::Registry(Box::new(e))
    }
}

/// `registry/name` normalised as image references are (`docker.io/alpine` is
/// `docker.io/library/alpine`), with the host to talk HTTP to.
pub fn repository(registry: &str, name: Option<&str>) -> Result<Reference, BrowseError> {
    let text = format!("{registry}/{}", name.unwrap_or("x"));
    let r: Reference = text
        .parse()
        .map_err(|e| BrowseError::Invalid(format!("{text:?}: {e}")))?;
    if r.registry != registry && !(registry == "index.docker.io" && r.registry == "docker.io") {
        return Err(BrowseError::Invalid(format!(
            "{registry:?} is not a registry host (a host has a '.' or a ':port', or is localhost)"
        )));
    }
    Ok(r)
}

pub async fn repositories(client: &Client, r: &Reference) -> Result<Vec<String>, BrowseError> {
    let mut names = client.catalog(r.api_host()).await?;
    names.sort();
    Ok(names)
}

/// The `ls` filters, as query parameters: one `allow` and one `deny` regex (anchored; use
/// `a|b` for several), `semver` (a range), `latest` (N).
#[derive(Debug, Default, serde::Deserialize)]
pub struct TagFilters {
    pub allow: Option<String>,
    pub deny: Option<String>,
    pub semver: Option<String>,
    pub latest: Option<usize>,
}

pub async fn tags(
    client: &Client,
    r: &Reference,
    filters: &TagFilters,
) -> Result<Vec<String>, BrowseError> {
    let invalid = |what: &str, e: select::SelectError| BrowseError::Invalid(format!("{what}: {e}"));
    let regex = |what: &str, s: &Option<String>| {
        s.as_deref()
            .map(|s| select::compile_regex(s, true).map_err(|e| invalid(what, e)))
            .transpose()
    };
    let selector = TagSelector {
        tags: None,
        allow: regex("allow", &filters.allow)?.into_iter().collect(),
        deny: regex("deny", &filters.deny)?.into_iter().collect(),
        semver: filters
            .semver
            .as_deref()
            .map(|s| select::parse_semver_range(s).map_err(|e| invalid("semver", e)))
            .transpose()?,
        latest: match filters.latest {
            Some(0) => {
                return Err(BrowseError::Invalid(
                    "latest: must be at least 1".to_owned(),
                ));
            }
            n => n,
        },
    };
    let listed = client.list_tags(r.api_host(), &r.repository).await?;
    let valid = valid_tags(listed, &r.origin(), &Silent);
    Ok(selector.select(&valid))
}

/// One platform of a tag.
#[derive(Debug, Serialize)]
pub struct PlatformView {
    /// `os/architecture[/variant]`; absent for a child without a platform (an
    /// attestation, say).
    pub platform: Option<String>,
    pub digest: String,
    /// Config and layers, in bytes.
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct TagView {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    /// The image's platforms (one for a single image, whose config names it only in its
    /// blob: absent there).
    pub platforms: Vec<PlatformView>,
    /// Distinct config and layer bytes over every platform.
    pub size: u64,
}

pub async fn tag(client: &Client, r: &Reference, tag: &str) -> Result<TagView, BrowseError> {
    let host = r.api_host();
    let top = client
        .get_verified(host, &r.repository, tag, None, None)
        .await?;
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    // An image's config and layer bytes, each blob also noted once in `blobs`.
    let mut image_size = |kind: &Kind| match kind {
        Kind::Image { config, layers } => std::iter::once(config.as_ref())
            .chain(layers)
            .map(|d| {
                blobs.insert(d.digest.clone(), d.size);
                d.size
            })
            .sum(),
        Kind::Index(_) => 0,
    };
    let mut platforms = Vec::new();
    match &top.manifest.kind {
        Kind::Image { .. } => platforms.push(PlatformView {
            platform: None,
            digest: top.digest.to_string(),
            size: image_size(&top.manifest.kind),
        }),
        Kind::Index(children) => {
            let children = &children[..children.len().min(MAX_CHILDREN)];
            let read = join_all(children.iter().map(|c| async move {
                let digest = c.digest.to_string();
                client
                    .get_verified(
                        host,
                        &r.repository,
                        &digest,
                        Some((&c.digest, "the index")),
                        Some(&c.media_type),
                    )
                    .await
            }))
            .await;
            for (child, got) in children.iter().zip(read) {
                let size = image_size(&got?.manifest.kind);
                platforms.push(PlatformView {
                    platform: child.platform.as_ref().map(|p| {
                        let mut s = format!("{}/{}", p.os, p.architecture);
                        if let Some(v) = &p.variant {
                            s = format!("{s}/{v}");
                        }
                        s
                    }),
                    digest: child.digest.to_string(),
                    size,
                });
            }
        }
    }
    Ok(TagView {
        reference: format!("{}:{tag}", r.origin()),
        digest: top.digest.to_string(),
        media_type: top.media_type().to_owned(),
        platforms,
        size: blobs.values().sum(),
    })
}
