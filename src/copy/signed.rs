//! Finding an image's cosign signatures at a source, for the signature policy
//! ([`crate::signature`] decides): the `sha256-<hex>.sig` tag, and the signature
//! manifests among its referrers (the referrers API, else the fallback tag's index).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::future::join_all;
use serde::Serialize;

use super::store::StoreSource;
use super::{CopyError, Source, fallback_tag, referrer_tag};
use crate::manifest::{Descriptor, Kind, REF_NAME, UPSTREAM_DIGEST, Verified};
use crate::reference::Digest;
use crate::signature::{
    CERTIFICATE_ANNOTATION, Candidate, MAX_PAYLOAD, Policy, SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT, SIMPLE_SIGNING, Signed,
};
use crate::store::StoreView;

/// Signature manifests read per image, and payload layers per manifest: a source
/// cannot make a check read without end.
const MAX_MANIFESTS: usize = 16;
const MAX_LAYERS: usize = 16;

/// The signatures of manifest `subject` in `repo` at `source`. An error is returned
/// only where the source cannot say what refers to the image; a signature that cannot
/// be read is a candidate with the reason, so that another may still pass.
pub async fn find<S: Source>(
    source: &S,
    repo: &str,
    subject: &Digest,
) -> Result<Vec<Candidate>, CopyError> {
    let found = source.referrers(repo, subject).await?;
    let mut manifests: Vec<(String, Result<Verified, String>)> = Vec::new();
    let sig_tag = format!("{}.sig", fallback_tag(subject));
    if found.tags.contains(&sig_tag) {
        let m = source.resolve(repo, &sig_tag).await;
        manifests.push((format!("tag {sig_tag}"), m.map_err(|e| unreadable(&e))));
    }
    let mut listed: Vec<Descriptor> = found.listed;
    if let Some(tag) = &found.fallback {
        match source.resolve(repo, tag).await.map(|v| v.manifest.kind) {
            Ok(Kind::Index(entries)) => listed.extend(entries),
            Ok(Kind::Image { .. }) => {}
            Err(e) => manifests.push((format!("tag {tag}"), Err(unreadable(&e)))),
        }
    }
    let mut seen = HashSet::new();
    listed.retain(|d| {
        d.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT) && seen.insert(d.digest.clone())
    });
    let read = join_all(
        listed
            .iter()
            .take(MAX_MANIFESTS)
            .map(|d| source.manifest(repo, &d.digest, Some(&d.media_type), super::LISTED)),
    )
    .await;
    for (d, m) in listed.iter().zip(read) {
        manifests.push((
            format!("referrer {}", d.digest),
            m.map_err(|e| unreadable(&e)),
        ));
    }
    let mut candidates = Vec::new();
    for (from, m) in manifests.into_iter().take(MAX_MANIFESTS) {
        let layers = match m.map(|v| v.manifest.kind) {
            Ok(Kind::Image { layers, .. }) => layers,
            Ok(Kind::Index(_)) => {
                let content = Err("not a signature manifest: it is an index".to_owned());
                candidates.push(Candidate { from, content });
                continue;
            }
            Err(why) => {
                candidates.push(Candidate {
                    from,
                    content: Err(why),
                });
                continue;
            }
        };
        let layers: Vec<&Descriptor> = layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING)
            .take(MAX_LAYERS)
            .collect();
        if layers.is_empty() {
            let content = Err(format!(
                "not a signature manifest: no {SIMPLE_SIGNING} layer"
            ));
            candidates.push(Candidate { from, content });
            continue;
        }
        let many = layers.len() > 1;
        for layer in layers {
            let content = match layer.annotations.get(SIGNATURE_ANNOTATION) {
                None => Err(format!(
                    "malformed signature: payload {} has no {SIGNATURE_ANNOTATION} annotation",
                    layer.digest
                )),
                Some(signature) => payload(source, repo, layer).await.map(|payload| Signed {
                    payload,
                    signature: signature.clone(),
                    keyless: layer.annotations.contains_key(CERTIFICATE_ANNOTATION),
                }),
            };
            let from = match many {
                true => format!("{from} (payload {})", layer.digest),
                false => from.clone(),
            };
            candidates.push(Candidate { from, content });
        }
    }
    Ok(candidates)
}

fn unreadable(e: &CopyError) -> String {
    format!(
        "cannot read it: {}",
        crate::report::error_chain(e).join(": ")
    )
}

/// The payload blob `layer`, whole, checked against its digest.
async fn payload<S: Source>(
    source: &S,
    repo: &str,
    layer: &Descriptor,
) -> Result<bytes::Bytes, String> {
    if layer.size > MAX_PAYLOAD {
        return Err(format!(
            "payload {} is {} bytes; a signing payload is at most {MAX_PAYLOAD}",
            layer.digest, layer.size
        ));
    }
    let read = source
        .blob(repo, layer, 0)
        .await
        .map_err(|e| unreadable(&e))?;
    let mut stream = read.stream;
    let mut bytes = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unreadable(&e))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > layer.size {
            break;
        }
    }
    let actual = Digest::sha256_of(&bytes);
    if read.offset != 0 || actual != layer.digest {
        return Err(format!(
            "payload {} hashes to {actual}: it is not what the signature manifest names",
            layer.digest
        ));
    }
    Ok(bytes.into())
}

/// One tagged image of a store, checked against a policy.
#[derive(Debug, Serialize)]
pub struct StoredCheck {
    /// `name:tag`.
    pub image: String,
    /// What the signatures must name: the image's digest, or for a platform-cut index
    /// the upstream index it was cut from (recorded when it was fetched).
    pub signed_digest: Digest,
    /// The keys whose signatures held.
    pub keys: Vec<String>,
    /// Why it does not satisfy the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Every tagged image of the store (not the signature, attestation and fallback tags)
/// checked against `policy` by the signatures stored with it.
pub async fn check_store(view: StoreView, policy: &Policy) -> Result<Vec<StoredCheck>, CopyError> {
    let mut indexes = HashMap::new();
    for name in view.repositories()? {
        let index = view.read_index(&name)?;
        indexes.insert(name, Arc::new(index));
    }
    let mut images: Vec<(String, String, Digest)> = Vec::new();
    for (name, index) in &indexes {
        for entry in index.entries() {
            let Some(tag) = entry.annotations.get(REF_NAME) else {
                continue;
            };
            if referrer_tag(tag) {
                continue;
            }
            let signed = entry
                .annotations
                .get(UPSTREAM_DIGEST)
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| entry.digest.clone());
            images.push((name.clone(), tag.clone(), signed));
        }
    }
    images.sort();
    let source = StoreSource::new(view, indexes);
    let mut out = Vec::with_capacity(images.len());
    for (name, tag, signed) in images {
        let outcome = match find(&source, &name, &signed).await {
            Ok(found) => policy.check(&signed, &found).map_err(|e| e.to_string()),
            Err(e) => Err(unreadable(&e)),
        };
        let (keys, refused) = match outcome {
            Ok(passed) => (passed.keys, None),
            Err(why) => (Vec::new(), Some(why)),
        };
        out.push(StoredCheck {
            image: format!("{name}:{tag}"),
            signed_digest: signed,
            keys,
            refused,
        });
    }
    Ok(out)
}
