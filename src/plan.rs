//! What a fetch, push or copy will do, resolved before any endpoint is touched: the
//! images and the name each is stored as (fetch), the targets parsed and checked, the
//! images to send and the name and tag each gets at each target (push, copy). Planning
//! reads the store's index.json files (push) but no registry.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::copy::{ImageJob, JobTarget, Overwrite, SourceRef};
use crate::manifest::UPSTREAM_DIGEST;
use crate::reference::{
    Digest, Reference, ReferenceError, validate_host, validate_repository, validate_tag,
};
use crate::select::PlatformSpec;
use crate::signature::Policy;
use crate::store::{StoreError, StoreView, TagIndex};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--to {target:?}: {reason}")]
    Target {
        target: String,
        reason: &'static str,
    },
    #[error("--to {target:?}")]
    TargetName {
        target: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{name:?} would be {joined:?} at the target, which is not a valid repository")]
    JoinedName {
        name: String,
        joined: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{spec:?} is not NAME, NAME:TAG or NAME@DIGEST")]
    Selection {
        spec: String,
        #[source]
        source: ReferenceError,
    },
    #[error(
        "{first} and {second} would both be stored as {name:?}; fetch them in separate roots or use --keep-host"
    )]
    NameClash {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "{reference}: with --keep-host the registry {registry:?} does not make a valid repository name; fetch without --keep-host"
    )]
    HostName {
        reference: String,
        registry: String,
        #[source]
        source: ReferenceError,
    },
    #[error("the store at {root} holds nothing to push")]
    EmptyStore { root: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One image to fetch and the repository it goes to.
#[derive(Debug, Clone)]
pub struct Planned {
    pub source: Reference,
    pub name: String,
    /// Keep only these platforms of a multi-platform image (empty: all).
    pub platforms: Vec<PlatformSpec>,
    /// Also fetch what refers to it (signatures, SBOMs, attestations).
    pub referrers: bool,
    /// Store it only when signed as this says (its referrers are then fetched too: see
    /// [`ImageJob::policy`]).
    pub policy: Option<Arc<Policy>>,
}

/// What the command line asks a fetch for, besides the references.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    /// Store `docker.io/library/alpine` rather than `library/alpine`.
    pub keep_host: bool,
    /// Keep only these platforms of multi-platform images (empty: all).
    pub platforms: Vec<PlatformSpec>,
    /// Also fetch the signatures, SBOMs and attestations that refer to each image.
    pub referrers: bool,
    /// Store only images signed as this says.
    pub policy: Option<Arc<Policy>>,
}

/// Where each reference will be stored; refuses invalid names and two sources that would
/// share a name.
pub fn fetch(refs: &[Reference], request: &FetchRequest) -> Result<Vec<Planned>, PlanError> {
    let mut owners: HashMap<String, String> = HashMap::new();
    let mut planned = Vec::with_capacity(refs.len());
    for r in refs {
        let name = stored_name(r, request.keep_host)?;
        let origin = r.origin();
        match owners.get(&name) {
            Some(first) if first != &origin => {
                return Err(PlanError::NameClash {
                    name,
                    first: first.clone(),
                    second: origin,
                });
            }
            Some(_) => {}
            None => {
                owners.insert(name.clone(), origin);
            }
        }
        planned.push(Planned {
            source: r.clone(),
            name,
            platforms: request.platforms.clone(),
            referrers: request.referrers,
            policy: request.policy.clone(),
        });
    }
    Ok(planned)
}

fn stored_name(r: &Reference, keep_host: bool) -> Result<String, PlanError> {
    if !keep_host {
        return Ok(r.repository.clone());
    }
    // A port's ':' is not allowed in repository names; "host-port" keeps it readable.
    let host = r.registry.to_ascii_lowercase().replace(':', "-");
    let name = format!("{host}/{}", r.repository);
    validate_repository(&name).map_err(|source| PlanError::HostName {
        reference: r.to_string(),
        registry: r.registry.clone(),
        source,
    })?;
    Ok(name)
}

/// A registry to send to: `HOST[:PORT]/PATH[:TAG]`. For push PATH is a prefix put before
/// every stored name (it may be empty); for copy it is the repository, with an optional
/// tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub path: String,
    pub tag: Option<String>,
}

impl std::str::FromStr for Target {
    type Err = PlanError;

    fn from_str(s: &str) -> Result<Target, PlanError> {
        let bad = |reason| PlanError::Target {
            target: s.to_owned(),
            reason,
        };
        let named = |source| PlanError::TargetName {
            target: s.to_owned(),
            source,
        };
        if s.contains("://") {
            return Err(bad(
                "give HOST[:PORT]/PATH without a scheme (--dest-tls-verify=false allows plain http)",
            ));
        }
        let (host, rest) = s.split_once('/').unwrap_or((s, ""));
        validate_host(host).map_err(named)?;
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) => (path, Some(tag.to_owned())),
            None => (rest, None),
        };
        if rest.contains('@') {
            return Err(bad(
                "a target takes a tag, not a digest (the digest is the source's)",
            ));
        }
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            validate_repository(path).map_err(named)?;
        }
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(named)?;
        }
        Ok(Target {
            host: host.to_owned(),
            path: path.to_owned(),
            tag,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)?;
        match &self.tag {
            Some(t) => write!(f, ":{t}"),
            None => Ok(()),
        }
    }
}

/// A push: the images in waves, each after the one before: tagged images, then the other
/// untagged manifests (digest fetches), then the referrers (so that a subject is at the
/// target before what refers to it); and the index.json of every repository read, for
/// the store source.
#[derive(Debug)]
pub struct PushPlan {
    pub waves: Vec<Vec<ImageJob>>,
    pub indexes: HashMap<String, Arc<TagIndex>>,
}

/// Images of a store chosen by a selection, in the waves a copy needs them: tagged
/// images, then the other untagged manifests, then the referrers (so that a subject is
/// at a target before what refers to it); and the index.json of every repository read.
#[derive(Debug)]
pub struct Selected {
    pub waves: [Vec<StoredImage>; 3],
    pub indexes: HashMap<String, Arc<TagIndex>>,
}

/// One image of a store: a tag, or a manifest stored by digest.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub repo: String,
    pub reference: SourceRef,
    pub tag: Option<String>,
}

/// Every stored repository, or those `selection` names (`NAME`, `NAME:TAG`,
/// `NAME@DIGEST`): what `push` sends and `export` bundles.
pub fn select_stored(view: &StoreView, selection: &[String]) -> Result<Selected, PlanError> {
    let mut wanted: Vec<(String, Option<SourceRef>)> = Vec::new();
    if selection.is_empty() {
        wanted.extend(view.repositories()?.into_iter().map(|n| (n, None)));
    }
    for spec in selection {
        wanted.push(parse_selection(spec)?);
    }
    let mut indexes: HashMap<String, Arc<TagIndex>> = HashMap::new();
    let mut referrers_of: HashMap<String, Arc<HashSet<Digest>>> = HashMap::new();
    let (mut tagged, mut untagged, mut referrers) = (Vec::new(), Vec::new(), Vec::new());
    for (name, only) in wanted {
        validate_repository(&name).map_err(|source| PlanError::Selection {
            spec: name.clone(),
            source,
        })?;
        // Each repository read once, however often the selection names it.
        let (index, refers) = match (indexes.get(&name), referrers_of.get(&name)) {
            (Some(i), Some(r)) => (i.clone(), r.clone()),
            _ => {
                let i = Arc::new(view.read_index(&name)?);
                let r = Arc::new(view.referrer_digests(&name)?);
                indexes.insert(name.clone(), i.clone());
                referrers_of.insert(name.clone(), r.clone());
                (i, r)
            }
        };
        let refs: Vec<(SourceRef, Option<String>)> = match only {
            Some(SourceRef::Tag(tag)) => {
                index.tag(&tag).ok_or_else(|| StoreError::UnknownTag {
                    name: name.clone(),
                    tag: tag.clone(),
                })?;
                vec![(SourceRef::Tag(tag.clone()), Some(tag))]
            }
            Some(SourceRef::Digest(d) | SourceRef::Referrer(d)) => {
                if !index.contains(&d) {
                    return Err(StoreError::UnknownManifest { name, digest: d }.into());
                }
                vec![(SourceRef::Digest(d), None)]
            }
            None => index
                .entries()
                .iter()
                .map(|e| match e.annotations.get(crate::manifest::REF_NAME) {
                    Some(tag) => (SourceRef::Tag(tag.clone()), Some(tag.clone())),
                    None => (SourceRef::Digest(e.digest.clone()), None),
                })
                .collect(),
        };
        for (reference, tag) in refs {
            let wave = match &reference {
                _ if tag.is_some() => &mut tagged,
                SourceRef::Digest(d) if refers.contains(d) => &mut referrers,
                _ => &mut untagged,
            };
            wave.push(StoredImage {
                repo: name.clone(),
                reference,
                tag,
            });
        }
    }
    if tagged.is_empty() && untagged.is_empty() && referrers.is_empty() {
        return Err(PlanError::EmptyStore {
            root: view.root().to_owned(),
        });
    }
    Ok(Selected {
        waves: [tagged, untagged, referrers],
        indexes,
    })
}

/// What `push` sends: [`select_stored`], each image as `<prefix>/<name>` at every target;
/// with a `policy`, a tagged image only when its stored signatures satisfy it.
pub fn push(
    view: &StoreView,
    selection: &[String],
    targets: &[Target],
    overwrite: Overwrite,
    policy: Option<&Arc<Policy>>,
) -> Result<PushPlan, PlanError> {
    if let Some(t) = targets.iter().find(|t| t.tag.is_some()) {
        return Err(PlanError::Target {
            target: t.to_string(),
            reason: "push keeps every image's own tags; give HOST[:PORT][/PREFIX]",
        });
    }
    let Selected { waves, indexes } = select_stored(view, selection)?;
    let job = |image: StoredImage| -> Result<ImageJob, PlanError> {
        let StoredImage {
            repo,
            reference,
            tag,
        } = image;
        let label = match &reference {
            SourceRef::Tag(t) => format!("{repo}:{t}"),
            SourceRef::Digest(d) | SourceRef::Referrer(d) => format!("{repo}@{d}"),
        };
        // Referrers and fallback tags are not images a policy asks signatures of.
        let policy = match (&reference, &tag) {
            (SourceRef::Tag(_), Some(tag)) if !crate::copy::referrer_tag(tag) => policy.cloned(),
            _ => None,
        };
        // A platform-cut index is checked against the index it was cut from, which is
        // what was signed (its index.json entry records it).
        let upstream = tag
            .as_deref()
            .filter(|_| policy.is_some())
            .and_then(|t| indexes.get(&repo)?.tag(t)?.annotations.get(UPSTREAM_DIGEST))
            .map(|d| (UPSTREAM_DIGEST.to_owned(), d.clone()));
        Ok(ImageJob {
            label,
            source: 0,
            platforms: Vec::new(),
            referrers: false,
            annotations: upstream.into_iter().collect(),
            policy,
            // Merged with a target's own, as a copy does.
            fallback: tag
                .as_deref()
                .and_then(crate::copy::fallback_subject)
                .is_some(),
            targets: targets
                .iter()
                .enumerate()
                .map(|(dest, t)| {
                    Ok(JobTarget {
                        dest,
                        repo: joined(&repo, t)?,
                        tag: tag.clone(),
                        overwrite,
                    })
                })
                .collect::<Result<_, PlanError>>()?,
            repo,
            reference,
        })
    };
    let waves = waves
        .into_iter()
        .map(|wave| wave.into_iter().map(job).collect())
        .collect::<Result<_, _>>()?;
    Ok(PushPlan { waves, indexes })
}

/// `<prefix>/<name>` at target `t`.
pub fn joined(name: &str, t: &Target) -> Result<String, PlanError> {
    if t.path.is_empty() {
        return Ok(name.to_owned());
    }
    let joined = format!("{}/{name}", t.path);
    validate_repository(&joined).map_err(|source| PlanError::JoinedName {
        name: name.to_owned(),
        joined: joined.clone(),
        source,
    })?;
    Ok(joined)
}

fn parse_selection(spec: &str) -> Result<(String, Option<SourceRef>), PlanError> {
    let bad = |source| PlanError::Selection {
        spec: spec.to_owned(),
        source,
    };
    if let Some((name, digest)) = spec.split_once('@') {
        let d: Digest = digest.parse().map_err(bad)?;
        return Ok((name.to_owned(), Some(SourceRef::Digest(d))));
    }
    match spec.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => {
            validate_tag(tag).map_err(bad)?;
            Ok((name.to_owned(), Some(SourceRef::Tag(tag.to_owned()))))
        }
        _ => Ok((spec.to_owned(), None)),
    }
}

/// A copy: one upstream image to every target. A target without a tag gets the source's
/// (or, for a source named by digest only, the manifest by digest).
/// `referrers`: also what refers to it (see [`ImageJob::referrers`]); `platforms`: keep
/// only those of an index.
pub fn copy(
    source: &Reference,
    targets: &[Target],
    referrers: bool,
    platforms: &[PlatformSpec],
    overwrite: Overwrite,
    policy: Option<Arc<Policy>>,
) -> Result<ImageJob, PlanError> {
    let reference = match (&source.digest, &source.tag) {
        (Some(d), _) => SourceRef::Digest(d.clone()),
        (None, Some(t)) => SourceRef::Tag(t.clone()),
        (None, None) => SourceRef::Tag("latest".to_owned()),
    };
    let targets = targets
        .iter()
        .enumerate()
        .map(|(dest, t)| {
            if t.path.is_empty() {
                return Err(PlanError::Target {
                    target: t.to_string(),
                    reason: "copy needs the repository at the target: HOST[:PORT]/REPOSITORY[:TAG]",
                });
            }
            Ok(JobTarget {
                dest,
                repo: t.path.clone(),
                tag: t.tag.clone().or_else(|| source.tag.clone()),
                overwrite,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ImageJob {
        label: source.to_string(),
        source: 0,
        repo: source.repository.clone(),
        reference,
        platforms: platforms.to_vec(),
        referrers,
        annotations: Default::default(),
        fallback: false,
        policy,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn two_sources_for_one_name_are_refused_naming_both() {
        let refs = [
            r("ghcr.io/org/app:1"),
            r("quay.io/org/app:2"),
            r("ghcr.io/org/app:3"),
        ];
        let err = fetch(&refs, &FetchRequest::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ghcr.io/org/app") && msg.contains("quay.io/org/app"),
            "{msg}"
        );
        let keep = FetchRequest {
            keep_host: true,
            ..FetchRequest::default()
        };
        let planned = fetch(&refs, &keep).unwrap();
        assert_eq!(planned[1].name, "quay.io/org/app");
    }

    #[test]
    fn keep_host_makes_ports_valid_names() {
        let keep = FetchRequest {
            keep_host: true,
            ..FetchRequest::default()
        };
        let planned = fetch(&[r("127.0.0.1:5000/team/app:1.2"), r("alpine")], &keep).unwrap();
        assert_eq!(planned[0].name, "127.0.0.1-5000/team/app");
        assert_eq!(planned[1].name, "docker.io/library/alpine");
    }

    #[test]
    fn a_push_sends_untagged_subjects_before_their_referrers() {
        use crate::manifest::{Descriptor, OCI_MANIFEST};
        use crate::store::{Store, TagUpdate};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (image, signature) = (Digest::sha256_of(b"image"), Digest::sha256_of(b"sig"));
        let entry = |digest: &Digest| TagUpdate {
            tag: None,
            media_type: OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: 3,
            annotations: Default::default(),
        };
        let referrer = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: signature.clone(),
            size: 3,
            urls: Vec::new(),
            platform: None,
            artifact_type: Some("application/vnd.example.sig".into()),
            annotations: Default::default(),
        };
        // Listed signature first, as index.json may well have it.
        store
            .publish(
                "a/b",
                &[entry(&signature), entry(&image)],
                &[(image.clone(), referrer)],
            )
            .unwrap();
        let view = StoreView::open(dir.path()).unwrap();
        let plan = push(
            &view,
            &[],
            &["r.example".parse().unwrap()],
            Overwrite::Replace,
            None,
        )
        .unwrap();
        let digests = |wave: &[ImageJob]| -> Vec<SourceRef> {
            wave.iter().map(|j| j.reference.clone()).collect()
        };
        assert!(plan.waves[0].is_empty());
        assert_eq!(digests(&plan.waves[1]), [SourceRef::Digest(image)]);
        assert_eq!(digests(&plan.waves[2]), [SourceRef::Digest(signature)]);
    }

    #[test]
    fn targets_parse_host_port_prefix_and_tag() {
        let t: Target = "10.0.0.5:5000/copy".parse().unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.tag),
            ("10.0.0.5:5000", "copy", None)
        );
        let t: Target = "reg-b.example/ops/bb:stable".parse().unwrap();
        assert_eq!(
            (t.path.as_str(), t.tag.as_deref()),
            ("ops/bb", Some("stable"))
        );
        let t: Target = "localhost:5000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("localhost:5000", ""));
    }

    #[test]
    fn hostile_targets_are_refused_before_any_request() {
        for bad in [
            "https://reg.example/x",
            "reg.example/../etc",
            "reg.example/Upper",
            "reg.example/x@sha256:00",
            "reg.example/x:bad tag",
            "bad host/x",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
