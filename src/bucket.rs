//! Buckets: the store published to S3-compatible object storage at the pull API's own
//! paths, so a stateless front (`gen-conf --s3-origin`, or a CDN) serves it with no disk.
//!
//! Layout under the URL's prefix `P` (see the README's "Object storage" section):
//! - `P/blobs/sha256/<hex>`: every blob and manifest once, as in the store's pool: a
//!   bucket has no hardlinks, and images share most of their layers.
//! - `P/v2/<name>/blobs/sha256:<hex>`: an empty object that says repository `name` holds
//!   the blob; the front checks it before answering from the pool, as distribution's
//!   own layer links do, so a repository serves only its own blobs.
//! - `P/v2/<name>/manifests/<tag or digest>`: the manifest's bytes with its media type.
//! - `P/v2/<name>/tags/list`, `P/v2/<name>/referrers/sha256:<hex>`, `P/v2/_catalog`: the
//!   store's served documents.
//!
//! Blobs, manifests and tags carry their digest as `x-amz-meta-digest`, which the front
//! answers as `Docker-Content-Digest`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::report::Reporter;
use crate::routes::{self, media_type_of};
use crate::store::{self, StoreError, StoreView};
use crate::store::{CATALOG_FILE, INDEX_PAGE, REFERRERS_DIR, SERVED_DIR, TAGS_FILE};

/// Blobs larger than this go up in parts of [`PART_SIZE`] (S3 takes at most 5 GiB in one
/// PUT, and a part that fails is retried alone).
const MULTIPART_FROM: u64 = 64 << 20;
const PART_SIZE: usize = 16 << 20;
/// Parts of one blob in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{url:?} is not a bucket URL: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot reach bucket {bucket:?}")]
    Connect {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
    #[error("listing s3://{bucket}/{prefix} failed")]
    List {
        bucket: String,
        prefix: String,
        #[source]
        source: object_store::Error,
    },
    #[error("uploading {key} failed")]
    Put {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("deleting objects the store no longer serves failed")]
    Delete {
        #[source]
        source: object_store::Error,
    },
    #[error("reading {} failed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed while it was published ({expected} bytes, now {found})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: {problem}", path.display())]
    Profile { path: PathBuf, problem: String },
    #[error(
        "the store serves no tag, so --delete would remove all {stale} objects of {url}; nothing was deleted (publish a store that holds images, or remove the prefix with the object store's own tools)"
    )]
    WouldEmpty { url: String, stale: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the object store said no, as far as its answer tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoBucket,
    Credentials,
    Unreachable,
}

impl BucketError {
    /// What the object store's answer means to the user; `None` for local failures.
    pub fn refusal(&self) -> Option<Refusal> {
        let source = match self {
            BucketError::Connect { source, .. }
            | BucketError::List { source, .. }
            | BucketError::Put { source, .. }
            | BucketError::Delete { source, .. } => source,
            _ => return None,
        };
        // A listing's failures arrive as Generic errors carrying S3's error code.
        let text = source.to_string();
        Some(match source {
            _ if text.contains("NoSuchBucket") => Refusal::NoBucket,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Refusal::Credentials,
            _ if [
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ]
            .iter()
            .any(|code| text.contains(code)) =>
            {
                Refusal::Credentials
            }
            _ => Refusal::Unreachable,
        })
    }
}

type Result<T, E = BucketError> = std::result::Result<T, E>;

/// `s3://<bucket>[/<prefix>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl std::str::FromStr for BucketUrl {
    type Err = BucketError;

    fn from_str(url: &str) -> Result<Self> {
        let bad = |why| BucketError::Url {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://<bucket>[/<prefix>]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        // S3's bucket naming rules (lowercase, digits, '.', '-'; 3 to 63 long).
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return Err(bad(
                "a bucket name is 3 to 63 characters of a-z, 0-9, '.' and '-'",
            ));
        }
        // The prefix is rendered into nginx's configuration by gen-conf too: plain
        // path components only.
        if !prefix.is_empty() && !plain_path(prefix) {
            return Err(bad(
                "the prefix is path components of [A-Za-z0-9._-] separated by single '/'",
            ));
        }
        Ok(BucketUrl {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// Path components of `[A-Za-z0-9._-]` joined by single `/`, none `.` or `..`: safe as
/// an object key prefix and in nginx's configuration alike.
pub fn plain_path(path: &str) -> bool {
    path.split('/').all(|c| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl BucketUrl {
    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }
}

/// Where the bucket's S3 API is and how to address it. Credentials come from the
/// standard AWS environment (keys, session token, web identity, container or instance
/// credentials).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `https://s3.example` (path-style unless `virtual_hosted`); AWS's own without it.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `https://<bucket>.<endpoint host>` instead of `<endpoint>/<bucket>`.
    pub virtual_hosted: bool,
}

/// A client for the bucket of `url`.
pub fn open(url: &BucketUrl, conn: &Connection) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&url.bucket)
        .with_virtual_hosted_style_request(conn.virtual_hosted);
    let profile = Profile::load()?;
    if let Some((key, secret, token)) = profile.credentials {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
        if let Some(token) = token {
            builder = builder.with_token(token);
        }
    }
    let region = conn.region.clone().or(profile.region);
    let endpoint = conn.endpoint.clone().or(profile.endpoint);
    if let Some(endpoint) = &endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &region {
        builder = builder.with_region(region);
    }
    let store = builder.build().map_err(|source| BucketError::Connect {
        bucket: url.bucket.clone(),
        source,
    })?;
    Ok(Arc::new(store))
}

/// What the AWS CLI's files say for the profile (`AWS_PROFILE`, else `default`), where
/// the environment does not: keys from the shared credentials file, region and
/// endpoint from the config file.
#[derive(Debug, Default)]
struct Profile {
    credentials: Option<(String, String, Option<String>)>,
    region: Option<String>,
    endpoint: Option<String>,
}

impl Profile {
    fn load() -> Result<Profile> {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let Some(home) = env("HOME") else {
            return Ok(Profile::default());
        };
        let aws = Path::new(&home).join(".aws");
        let name = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let read = |path: PathBuf| -> Result<Option<ini::Ini>> {
            match ini::Ini::load_from_file(&path) {
                Ok(file) => Ok(Some(file)),
                Err(ini::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(ini::Error::Io(source)) => Err(BucketError::Read { path, source }),
                Err(ini::Error::Parse(e)) => Err(BucketError::Profile {
                    path,
                    problem: e.to_string(),
                }),
            }
        };
        let mut profile = Profile::default();
        if env("AWS_ACCESS_KEY_ID").is_none() {
            let path = env("AWS_SHARED_CREDENTIALS_FILE")
                .map_or_else(|| aws.join("credentials"), PathBuf::from);
            if let Some(file) = read(path)? {
                let section = file.section(Some(name.as_str()));
                let get = |key| section.and_then(|s| s.get(key)).map(str::to_owned);
                if let (Some(key), Some(secret)) =
                    (get("aws_access_key_id"), get("aws_secret_access_key"))
                {
                    profile.credentials = Some((key, secret, get("aws_session_token")));
                }
            }
        }
        let path = env("AWS_CONFIG_FILE").map_or_else(|| aws.join("config"), PathBuf::from);
        if let Some(file) = read(path)? {
            // The config file names profiles other than default `[profile NAME]`.
            let section = if name == "default" {
                file.section(Some("default"))
            } else {
                file.section(Some(format!("profile {name}")))
            };
            let get = |key| section.and_then(|s| s.get(key)).map(str::to_owned);
            profile.region = get("region");
            profile.endpoint = get("endpoint_url");
        }
        Ok(profile)
    }
}

/// The order objects are written in: a reader never finds a pointer whose content is
/// missing (blobs, then what names them, then tags and lists, the catalog last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Blobs,
    Manifests,
    Tags,
    Catalog,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Blobs, Phase::Manifests, Phase::Tags, Phase::Catalog];
}

/// One object the bucket should hold.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub phase: Phase,
    /// Its content; `None`: empty (a repository's blob link).
    pub file: Option<PathBuf>,
    pub size: u64,
    pub content_type: &'static str,
    /// `sha256:<hex>`, sent as `x-amz-meta-digest`.
    pub digest: Option<String>,
    /// Content that may change under the same key (tags, lists): its MD5, which S3
    /// answers as the ETag of a single-part upload; `None` for content named by digest.
    pub md5: Option<String>,
}

/// Everything the store serves, as the objects of the bucket's layout.
pub fn layout(view: &StoreView, url: &BucketUrl) -> Result<Vec<Object>> {
    let root = view.root();
    let model = routes::scan(root)?;
    for skipped in &model.skipped {
        tracing::warn!("not published: {skipped}");
    }
    let mut objects = Vec::new();
    let mut pool: BTreeMap<String, u64> = BTreeMap::new();
    let mut md5s: HashMap<String, String> = HashMap::new();
    let served = root.join(SERVED_DIR);
    for (name, repo) in &model.repos {
        let blobs = store::repo_path(root, name)?.join("blobs/sha256");
        for hex in &repo.blobs {
            let path = blobs.join(hex);
            let size = file_size(&path)?;
            objects.push(Object {
                key: url.key(&format!("v2/{name}/blobs/sha256:{hex}")),
                phase: Phase::Manifests,
                file: None,
                size: 0,
                content_type: routes::BLOB_TYPE,
                digest: None,
                md5: None,
            });
            if let Some(kind) = repo.manifests.get(hex) {
                objects.push(Object {
                    key: url.key(&format!("v2/{name}/manifests/sha256:{hex}")),
                    phase: Phase::Manifests,
                    file: Some(path),
                    size,
                    content_type: media_type_of(kind),
                    digest: Some(format!("sha256:{hex}")),
                    md5: None,
                });
            }
            pool.insert(hex.clone(), size);
        }
        for (tag, hex) in &repo.tags {
            let path = blobs.join(hex);
            let md5 = match md5s.get(hex) {
                Some(m) => m.clone(),
                None => {
                    let m = md5_of(&path)?;
                    md5s.insert(hex.clone(), m.clone());
                    m
                }
            };
            objects.push(Object {
                key: url.key(&format!("v2/{name}/manifests/{tag}")),
                phase: Phase::Tags,
                size: file_size(&path)?,
                file: Some(path),
                content_type: media_type_of(repo.manifests.get(hex).copied().unwrap_or("blob")),
                digest: Some(format!("sha256:{hex}")),
                md5: Some(md5),
            });
        }
        let docs = served.join(name);
        objects.extend(document(
            docs.join(TAGS_FILE),
            url.key(&format!("v2/{name}/tags/list")),
            JSON,
            Phase::Tags,
        )?);
        // The catalog's HTML pages, where a writer rendered them.
        for page in store::pages(&docs)? {
            if let Some(file) = page.file_name().and_then(|f| f.to_str()) {
                let key = url.key(&format!("pages/{name}/{file}"));
                objects.extend(document(page.clone(), key, HTML, Phase::Catalog)?);
            }
        }
        let referrers = docs.join(REFERRERS_DIR);
        for entry in std::fs::read_dir(&referrers).into_iter().flatten() {
            let entry = entry.map_err(|source| BucketError::Read {
                path: referrers.clone(),
                source,
            })?;
            let file = entry.file_name();
            let Some(hex) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            objects.extend(document(
                entry.path(),
                url.key(&format!("v2/{name}/referrers/sha256:{hex}")),
                crate::manifest::OCI_INDEX,
                Phase::Tags,
            )?);
        }
    }
    let pool_dir = store::pool_dir(root);
    for (hex, size) in pool {
        objects.push(Object {
            key: url.key(&format!("blobs/sha256/{hex}")),
            phase: Phase::Blobs,
            file: Some(pool_dir.join(&hex)),
            size,
            content_type: routes::BLOB_TYPE,
            digest: Some(format!("sha256:{hex}")),
            md5: None,
        });
    }
    let last = Phase::Catalog;
    objects.extend(document(
        served.join(CATALOG_FILE),
        url.key("v2/_catalog"),
        JSON,
        last,
    )?);
    objects.extend(document(
        served.join(INDEX_PAGE),
        url.key("pages/index.html"),
        HTML,
        last,
    )?);
    Ok(objects)
}

/// A served document of the store (a tags list, a referrers index, the catalog, a page).
/// `None` where the store has none (a store no writer has published to yet).
fn document(
    path: PathBuf,
    key: String,
    content_type: &'static str,
    phase: Phase,
) -> Result<Option<Object>> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(Object {
        key,
        phase,
        size: file_size(&path)?,
        md5: Some(md5_of(&path)?),
        file: Some(path),
        content_type,
        digest: None,
    }))
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| BucketError::Read {
            path: path.to_owned(),
            source,
        })
}

fn md5_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| BucketError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(hex::encode(Md5::digest(&bytes)))
}

#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// Objects in flight at once.
    pub jobs: usize,
    /// Remove objects of the layout that the store no longer serves (after the new ones
    /// are in; objects outside the layout's paths are never touched).
    pub delete: bool,
}

/// What a publish did.
#[derive(Debug, Default, Serialize)]
pub struct Published {
    pub url: String,
    /// Objects the store's layout has, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Already in the bucket as they are.
    pub skipped: usize,
    pub deleted: usize,
    /// Objects of the layout's paths that the store no longer serves, left in place
    /// (without `delete`).
    pub stale: usize,
}

/// Bring the bucket to `objects`: list what it has under the prefix, upload what is
/// missing or changed phase by phase, then (with `delete`) remove what is no longer
/// served, pointers before the blobs they name.
pub async fn publish(
    bucket: Arc<dyn ObjectStore>,
    url: &BucketUrl,
    objects: Vec<Object>,
    opts: PublishOptions,
    reporter: &dyn Reporter,
) -> Result<Published> {
    let present = list(bucket.as_ref(), url).await?;
    let mut report = Published {
        url: url.to_string(),
        objects: objects.len(),
        bytes: objects.iter().map(|o| o.size).sum(),
        ..Published::default()
    };
    // A store that serves nothing (a wrong --root) would empty the bucket.
    let serves_nothing = !objects
        .iter()
        .any(|o| o.phase == Phase::Tags && o.digest.is_some());
    let mut wanted = std::collections::HashSet::with_capacity(objects.len());
    let mut phases: BTreeMap<Phase, Vec<Object>> = BTreeMap::new();
    for object in objects {
        wanted.insert(object.key.clone());
        let current = present.get(&object.key);
        let same = current.is_some_and(|(size, etag)| {
            *size == object.size
                && object
                    .md5
                    .as_ref()
                    .is_none_or(|md5| etag.as_deref().map(|e| e.trim_matches('"')) == Some(md5))
        });
        if same {
            report.skipped += 1;
        } else {
            phases.entry(object.phase).or_default().push(object);
        }
    }
    for phase in Phase::ALL {
        let batch = phases.remove(&phase).unwrap_or_default();
        tracing::info!("{phase:?}: uploading {} objects", batch.len());
        let sent: Vec<u64> = futures::stream::iter(batch)
            .map(|object| {
                let bucket = bucket.clone();
                let url = &report.url;
                async move {
                    let sent = put(bucket.as_ref(), &object).await?;
                    reporter.bytes_sent(url, sent);
                    Ok::<_, BucketError>(sent)
                }
            })
            .buffer_unordered(opts.jobs.max(1))
            .try_collect()
            .await?;
        report.uploaded += sent.len();
        report.uploaded_bytes += sent.iter().sum::<u64>();
        crate::crashpoint::hit("bucket-phase");
    }
    let stale: Vec<&String> = present.keys().filter(|k| !wanted.contains(*k)).collect();
    report.stale = stale.len();
    if opts.delete && !stale.is_empty() && serves_nothing {
        return Err(BucketError::WouldEmpty {
            url: url.to_string(),
            stale: stale.len(),
        });
    }
    if opts.delete && !stale.is_empty() {
        // Pointers before what they name: tags and lists, then manifests by digest and
        // blob links, then the pool's blobs.
        let pool = url.key("blobs/");
        let mut order: BTreeMap<u8, Vec<&String>> = BTreeMap::new();
        for key in stale {
            let rank = if key.starts_with(&pool) {
                2
            } else if key.contains("/manifests/sha256:") || key.contains("/blobs/sha256:") {
                1
            } else {
                0
            };
            order.entry(rank).or_default().push(key);
        }
        for batch in order.into_values() {
            report.deleted += delete(bucket.as_ref(), batch).await?;
        }
        report.stale = 0;
    }
    Ok(report)
}

/// The layout's objects the bucket holds: key → (size, ETag).
async fn list(
    bucket: &dyn ObjectStore,
    url: &BucketUrl,
) -> Result<HashMap<String, (u64, Option<String>)>> {
    let pool = url.key("blobs/sha256/");
    let api = url.key("v2/");
    let pages = url.key("pages/");
    let prefix = (!url.prefix.is_empty()).then(|| Key::from(url.prefix.as_str()));
    let mut found = HashMap::new();
    let mut listing = bucket.list(prefix.as_ref());
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| BucketError::List {
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            source,
        })?;
        let key = meta.location.to_string();
        if key.starts_with(&pool) || key.starts_with(&api) || key.starts_with(&pages) {
            found.insert(key, (meta.size, meta.e_tag));
        }
    }
    Ok(found)
}

/// Upload one object; returns its size.
async fn put(bucket: &dyn ObjectStore, object: &Object) -> Result<u64> {
    let key = Key::from(object.key.as_str());
    let failed = |source| BucketError::Put {
        key: object.key.clone(),
        source,
    };
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, object.content_type.into());
    let cache = if object.md5.is_some() {
        REVALIDATE
    } else {
        IMMUTABLE
    };
    attributes.insert(Attribute::CacheControl, cache.into());
    if let Some(digest) = &object.digest {
        attributes.insert(Attribute::Metadata("digest".into()), digest.clone().into());
    }
    let Some(path) = &object.file else {
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        bucket
            .put_opts(&key, PutPayload::default(), opts)
            .await
            .map_err(failed)?;
        return Ok(0);
    };
    let read = |source| BucketError::Read {
        path: path.clone(),
        source,
    };
    if object.size < MULTIPART_FROM {
        let bytes = tokio::fs::read(path).await.map_err(read)?;
        check_size(path, object.size, bytes.len() as u64)?;
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        bucket
            .put_opts(&key, PutPayload::from(bytes), opts)
            .await
            .map_err(failed)?;
        return Ok(object.size);
    }
    let opts = PutMultipartOptions {
        attributes,
        ..PutMultipartOptions::default()
    };
    let upload = bucket
        .put_multipart_opts(&key, opts)
        .await
        .map_err(failed)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let sent = async {
        let mut file = tokio::fs::File::open(path).await.map_err(read)?;
        let mut total = 0u64;
        loop {
            let mut part = BytesMut::with_capacity(PART_SIZE);
            while part.len() < PART_SIZE {
                if file.read_buf(&mut part).await.map_err(read)? == 0 {
                    break;
                }
            }
            if part.is_empty() {
                break;
            }
            total += part.len() as u64;
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(failed)?;
            writer.put(part.freeze());
        }
        check_size(path, object.size, total)
    }
    .await;
    match sent {
        Ok(()) => {
            writer.finish().await.map_err(failed)?;
            Ok(object.size)
        }
        Err(e) => {
            // Parts already sent would be billed until a lifecycle rule removed them.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

fn check_size(path: &Path, expected: u64, found: u64) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(BucketError::Changed {
            path: path.to_owned(),
            expected,
            found,
        })
    }
}

async fn delete(bucket: &dyn ObjectStore, keys: Vec<&String>) -> Result<usize> {
    let count = keys.len();
    let paths = futures::stream::iter(
        keys.into_iter()
            .map(|k| Ok(Key::from(k.as_str())))
            .collect::<Vec<_>>(),
    )
    .boxed();
    let mut results = bucket.delete_stream(paths);
    while let Some(result) = results.next().await {
        result.map_err(|source| BucketError::Delete { source })?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_checked_before_they_reach_a_request_or_nginx() {
        let url: BucketUrl = "s3://my-bucket/mirror/a".parse().unwrap();
        assert_eq!(url.bucket, "my-bucket");
        assert_eq!(url.prefix, "mirror/a");
        assert_eq!(url.key("v2/_catalog"), "mirror/a/v2/_catalog");
        let root: BucketUrl = "s3://bucket".parse().unwrap();
        assert_eq!(root.key("v2/_catalog"), "v2/_catalog");
        assert_eq!("s3://bucket/p/".parse::<BucketUrl>().unwrap().prefix, "p");
        for bad in [
            "bucket/p",
            "https://bucket/p",
            "s3://B/p",
            "s3://ab/p",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a b",
            "s3://bucket/a;b",
            "s3://-bucket/p",
        ] {
            assert!(bad.parse::<BucketUrl>().is_err(), "{bad}");
        }
    }
}
