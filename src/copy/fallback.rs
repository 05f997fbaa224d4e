//! Fallback tags (the distribution spec's referrers tag schema): where a destination has
//! no referrers API, `<alg>-<hex of subject>` holds an OCI index of the subject's
//! referrers. The engine keeps it as it puts referrers by digest, and merges a source's
//! fallback tag with the destination's own; entries the destination had are kept as
//! they were written.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Annotations, CopyError, Destination, Engine, Put, Slot, Source, bump};
use crate::manifest::{Kind, OCI_INDEX, Verified};
use crate::reference::Digest;

/// The fallback tag of the distribution spec's referrers tag schema: `<alg>-<hex>` of
/// the subject, holding an OCI index of its referrers.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.hex())
}

/// A tag that names what refers to an image rather than an image: the fallback tag
/// `sha256-<hex>` and cosign's `sha256-<hex>.sig/.att/.sbom`.
pub fn referrer_tag(tag: &str) -> bool {
    let bare = super::COSIGN_SUFFIXES
        .iter()
        .find_map(|s| tag.strip_suffix(s))
        .unwrap_or(tag);
    fallback_subject(bare).is_some()
}

/// The subject's hex of a fallback tag (`sha256-<64 hex>`).
pub fn fallback_subject(tag: &str) -> Option<&str> {
    let hex = tag.strip_prefix("sha256-")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

impl<S: Source, D: Destination> Engine<S, D> {
    /// Add `referrer` to its subject's fallback tag at the slot.
    pub(super) async fn update_fallback(
        &self,
        slot: &Slot,
        subject: &Digest,
        referrer: &Verified,
        annotations: &Annotations,
    ) {
        let ours = referrer
            .manifest
            .referrer_descriptor(&referrer.digest, referrer.size());
        let raw = serde_json::value::to_raw_value(&ours).expect("a descriptor serialises");
        let add = vec![(referrer.digest.clone(), raw)];
        let tag = fallback_tag(subject);
        self.fallback(slot, &tag, add, None, annotations).await;
    }

    /// Bring the source's fallback tag `tag` (its index `index`) to the slot: as it is
    /// where the slot has none, else what it lists added to the slot's own.
    pub(super) async fn merge_fallback(
        &self,
        slot: &Slot,
        tag: &str,
        index: &Verified,
        annotations: &Annotations,
    ) {
        let what = || format!("{tag} at the source");
        let raw = match serde_json::from_slice::<Listed>(&index.bytes) {
            Ok(listed) => listed.manifests,
            Err(e) => {
                return slot.fail(Arc::new(CopyError::Manifest {
                    what: what(),
                    source: e.into(),
                }));
            }
        };
        let Kind::Index(children) = &index.manifest.kind else {
            return slot.fail(Arc::new(CopyError::NotReferrersIndex {
                what: what(),
                media_type: index.media_type().to_owned(),
            }));
        };
        let add = children.iter().map(|c| c.digest.clone()).zip(raw).collect();
        self.fallback(slot, tag, add, Some(index), annotations)
            .await;
    }

    /// Put the fallback tag `tag` at the slot with the entries `add` (digest, descriptor
    /// as written) it lacks; `whole` is put as it is where the slot has no such tag. One
    /// update of a tag at a time: two referrers of one subject read and rewrite the same
    /// index, and the second must see the first's.
    async fn fallback(
        &self,
        slot: &Slot,
        tag: &str,
        add: Vec<(Digest, Box<RawValue>)>,
        whole: Option<&Verified>,
        annotations: &Annotations,
    ) {
        let lock = self.fallback_claims[slot.dest]
            .lock()
            .expect("fallback claim lock")
            .entry((slot.repo.clone(), tag.to_owned()))
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let updated: Result<(), CopyError> = async {
            let dest = &self.dests[slot.dest];
            let what = || format!("{}/{}:{tag}", dest.name(), slot.repo);
            let put = |index: Verified| async move {
                dest.put_manifest(&slot.repo, Put::Tag(tag, annotations), &index)
                    .await?;
                bump(&self.counters[slot.dest].manifests_put, 1);
                Ok::<(), CopyError>(())
            };
            let Some(old) = dest.get_manifest(&slot.repo, tag).await? else {
                if let Some(whole) = whole {
                    return put(whole.clone()).await;
                }
                let manifests = add.into_iter().map(|(_, raw)| raw).collect();
                return put(fallback_index(manifests, &what)?).await;
            };
            let listed = match &old.manifest.kind {
                Kind::Index(listed) if old.media_type() == OCI_INDEX => listed,
                _ => {
                    return Err(CopyError::NotReferrersIndex {
                        what: what(),
                        media_type: old.media_type().to_owned(),
                    });
                }
            };
            // Nothing of the target's own: the source's index as it is.
            if let Some(whole) = whole
                && listed
                    .iter()
                    .all(|l| add.iter().any(|(d, _)| *d == l.digest))
            {
                return put(whole.clone()).await;
            }
            let new: Vec<Box<RawValue>> = add
                .into_iter()
                .filter(|(d, _)| !listed.iter().any(|l| &l.digest == d))
                .map(|(_, raw)| raw)
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            let mut manifests = serde_json::from_slice::<Listed>(&old.bytes)
                .map_err(|e| CopyError::Manifest {
                    what: what(),
                    source: e.into(),
                })?
                .manifests;
            manifests.extend(new);
            put(fallback_index(manifests, &what)?).await
        }
        .await;
        if let Err(e) = updated {
            slot.fail(Arc::new(e));
        }
    }
}

/// An index's entries, as written.
#[derive(Deserialize)]
struct Listed {
    #[serde(default)]
    manifests: Vec<Box<RawValue>>,
}

/// A fallback tag's index of `manifests`.
fn fallback_index(
    manifests: Vec<Box<RawValue>>,
    what: &dyn Fn() -> String,
) -> Result<Verified, CopyError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Fallback {
        schema_version: u32,
        media_type: &'static str,
        manifests: Vec<Box<RawValue>>,
    }
    let bytes = serde_json::to_vec(&Fallback {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })
    .expect("an index serialises");
    Verified::new(Bytes::from(bytes), None).map_err(|source| CopyError::Manifest {
        what: what(),
        source,
    })
}
