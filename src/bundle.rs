//! Air-gap bundles: one tar file (zstd-compressed when its name ends in `.zst`) that is
//! itself an OCI image layout, so skopeo reads `oci-archive:<bundle>:<name>:<tag>`.
//!
//! Entries, in this order: `oci-layout`; `index.json`, one descriptor per image (a tag's
//! `org.opencontainers.image.ref.name` is `<name>:<tag>`, an image stored by digest names
//! its repository in [`REPOSITORY`]); [`META_FILE`], which lists every blob the images
//! reach with its size, split into those the tar carries and those a delta takes from its
//! base; then `blobs/sha256/<hex>`, each carried blob once. The documents come first so
//! that a reader knows every blob and its size before the first byte of one: anything
//! else in the tar, or a blob larger than declared, is refused before it is written.
//!
//! A blob set's identity is the sha256 of its sorted digests, one per line. A delta
//! records its base's; a state file (beside each bundle, and in a store after an import)
//! lists a set, for `export --since`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{Descriptor, OCI_INDEX, REF_NAME};
use crate::plan::{self, PlanError, StoredImage};
use crate::reference::{Digest, validate_repository, validate_tag};
use crate::report::Reporter;
use crate::store::inventory::{reachable, reachable_in};
use crate::store::{BlobClaim, ImageIndex, Store, StoreError, StoreView, pool_dir, write_atomic};

pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
pub const META_FILE: &str = "static-registry-bundle.json";
/// The repository of an image stored by digest (a tag's is in its ref name).
pub const REPOSITORY: &str = "io.static-registry.repository";
/// Where an import leaves the store's state: every blob it holds, for `export --since`.
pub const STORE_STATE: &str = ".bundle-state.json";
const FORMAT: u32 = 1;
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Bound on each document read before the blobs (index.json of 100k tags is ~30 MiB).
const MAX_DOCUMENT: u64 = 64 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const COPY_BUFFER: usize = 1 << 20;
/// zstd's default level: about as fast as a disk writes, on one core of each worker.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a static-registry bundle: {reason}", path.display())]
    NotBundle { path: PathBuf, reason: String },
    #[error("{}: entry {entry:?} is refused: {reason}; nothing of the bundle was published", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{}: blob {digest}: {source}; nothing of the bundle was published", path.display())]
    Blob {
        path: PathBuf,
        digest: Digest,
        source: StoreError,
    },
    #[error(
        "{} is a delta on base {base}, and the store lacks {missing} of the {needed} blobs it takes from that base (first: {first}); nothing was imported",
        path.display()
    )]
    BaseMissing {
        path: PathBuf,
        base: String,
        needed: usize,
        missing: usize,
        first: Digest,
    },
    #[error(
        "{} ends before {missing} of the {carried} blobs it lists (first: {first}): the file is truncated; nothing of it was published",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        carried: usize,
        missing: usize,
        first: Digest,
    },
    #[error(
        "{}: {image} reaches {digest}, which the bundle does not list; nothing of it was published",
        path.display()
    )]
    Unlisted {
        path: PathBuf,
        image: String,
        digest: Digest,
    },
    #[error(
        "{} is part of a bundle in {of} parts, and part {missing} is not among the files given: give every part",
        path.display()
    )]
    PartMissing {
        path: PathBuf,
        missing: usize,
        of: usize,
    },
    #[error("{} is neither a bundle nor a state file: {reason}", path.display())]
    Base { path: PathBuf, reason: String },
    #[error("the store lacks blob {digest} of {image}; run `static-registry verify --repair`")]
    StoreIncomplete { image: String, digest: Digest },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl BundleError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
        let path = path.to_owned();
        move |source| BundleError::Io {
            action,
            path,
            source,
        }
    }
}

/// The bundle's own document: which blobs it carries, which it takes from its base.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    #[serde(rename = "staticRegistryBundle")]
    pub format: u32,
    /// The identity of every blob its images reach.
    pub set: Digest,
    /// The identity of the base a delta was made against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Digest>,
    /// Blobs in this tar, with their sizes.
    pub carried: BTreeMap<Digest, u64>,
    /// Blobs its images reach that the base holds (a delta's), with their sizes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub needed: BTreeMap<Digest, u64>,
    /// Which part this file is, of a bundle split for its media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub number: usize,
    pub of: usize,
}

/// A blob set, as `export --since` takes it: written beside every bundle, and into a
/// store by `import` (then it lists every blob the store holds).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(rename = "staticRegistryState")]
    pub format: u32,
    pub set: Digest,
    pub blobs: BTreeSet<Digest>,
}

impl State {
    pub fn new(blobs: BTreeSet<Digest>) -> State {
        State {
            format: FORMAT,
            set: set_identity(blobs.iter()),
            blobs,
        }
    }
}

/// The identity of a blob set: sha256 of its digests, sorted, one per line.
pub fn set_identity<'a>(digests: impl Iterator<Item = &'a Digest>) -> Digest {
    let mut lines = String::new();
    for d in digests.collect::<BTreeSet<_>>() {
        lines.push_str(&d.to_string());
        lines.push('\n');
    }
    Digest::sha256_of(lines.as_bytes())
}

/// One image of a bundle.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: Option<String>,
    /// Its index.json entry without the naming annotations.
    pub descriptor: Descriptor,
}

impl Image {
    pub fn label(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repo),
            None => format!("{}@{}", self.repo, self.descriptor.digest),
        }
    }
}

/// What a bundle's documents say.
#[derive(Debug, Clone)]
pub struct Header {
    pub meta: Meta,
    pub images: Vec<Image>,
}

// ---- export ----------------------------------------------------------------------------

/// What `export` wrote.
#[derive(Debug, Serialize)]
pub struct Exported {
    /// The bundle, or its parts.
    pub files: Vec<PathBuf>,
    pub state: PathBuf,
    pub images: usize,
    pub set: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Digest>,
    pub carried: usize,
    pub carried_bytes: u64,
    pub needed: usize,
    pub needed_bytes: u64,
    /// The size of its files.
    pub bytes: u64,
}

/// What goes into a bundle: the images, and every blob they reach in the order it is
/// written (manifests before what they name).
#[derive(Debug)]
pub struct Contents {
    pub images: Vec<Image>,
    pub blobs: Vec<(Digest, u64)>,
}

impl Contents {
    /// The blobs a bundle carries, and those it takes from `base` (none without one).
    pub fn divide(&self, base: Option<&State>) -> (BTreeMap<Digest, u64>, BTreeMap<Digest, u64>) {
        self.blobs
            .iter()
            .cloned()
            .partition(|(d, _)| !base.is_some_and(|b| b.blobs.contains(d)))
    }
}

/// The images `selection` names in the store (all of them when empty), with what refers
/// to them, and every blob they reach; each blob checked to be in the pool.
pub fn contents(view: &StoreView, selection: &[String]) -> Result<Contents, BundleError> {
    let selected = plan::select_stored(view, selection)?;
    let mut images = Vec::new();
    let mut listed = HashSet::new();
    // Each repository's entries by digest (a scan per image would be quadratic).
    let by_digest: HashMap<&str, HashMap<&Digest, &Descriptor>> = selected
        .indexes
        .iter()
        .map(|(repo, index)| {
            let entries = index.entries().iter().map(|e| (&e.digest, e)).collect();
            (repo.as_str(), entries)
        })
        .collect();
    let mut queue: Vec<StoredImage> = selected.waves.into_iter().flatten().collect();
    queue.reverse();
    while let Some(image) = queue.pop() {
        let index = &selected.indexes[&image.repo];
        let descriptor = match &image.tag {
            Some(tag) => index.tag(tag),
            None => image
                .reference
                .digest()
                .and_then(|d| by_digest[image.repo.as_str()].get(d).copied()),
        };
        let Some(descriptor) = descriptor else {
            continue;
        };
        if !listed.insert((
            image.repo.clone(),
            image.tag.clone(),
            descriptor.digest.clone(),
        )) {
            continue;
        }
        // Referrers travel with their subjects, also when only the subject was named:
        // those stored by digest, and those under the referrers fallback tag and
        // cosign's tags.
        for r in view.read_referrers(&image.repo, &descriptor.digest)? {
            if index.contains(&r.digest) {
                queue.push(StoredImage {
                    repo: image.repo.clone(),
                    reference: crate::copy::SourceRef::Digest(r.digest.clone()),
                    tag: None,
                });
            }
        }
        let fallback = format!("sha256-{}", descriptor.digest.hex());
        for tag in ["", ".sig", ".att", ".sbom"].map(|s| format!("{fallback}{s}")) {
            if index.tag(&tag).is_some() {
                queue.push(StoredImage {
                    repo: image.repo.clone(),
                    reference: crate::copy::SourceRef::Tag(tag.clone()),
                    tag: Some(tag),
                });
            }
        }
        let mut descriptor = descriptor.clone();
        descriptor.annotations.remove(REF_NAME);
        images.push(Image {
            repo: image.repo,
            tag: image.tag,
            descriptor,
        });
    }
    let pool = pool_dir(view.root());
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    for image in &images {
        let dir = crate::store::repo_path(view.root(), &image.repo)?;
        for d in reachable(&dir, std::slice::from_ref(&image.descriptor)) {
            if d.is_foreign() || !seen.insert(d.digest.clone()) {
                continue;
            }
            let held = std::fs::metadata(pool.join(d.digest.hex())).map(|m| m.len());
            if held.ok() != Some(d.size) {
                return Err(BundleError::StoreIncomplete {
                    image: image.label(),
                    digest: d.digest,
                });
            }
            blobs.push((d.digest, d.size));
        }
    }
    Ok(Contents { images, blobs })
}

/// Read `path` as a base for a delta: a state file, or a bundle (its whole set).
pub fn read_base(path: &Path) -> Result<State, BundleError> {
    let mut file = File::open(path).map_err(BundleError::io("open", path))?;
    let mut first = [0u8; 1];
    let n = file
        .read(&mut first)
        .map_err(BundleError::io("read", path))?;
    if n == 1 && first[0] == b'{' {
        let mut text = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.take(MAX_DOCUMENT).read_to_end(&mut text))
            .map_err(BundleError::io("read", path))?;
        return serde_json::from_slice(&text).map_err(|e| BundleError::Base {
            path: path.to_owned(),
            reason: format!("not a state file: {e}"),
        });
    }
    let header = read_header(path).map_err(|e| BundleError::Base {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let blobs = header
        .meta
        .carried
        .into_keys()
        .chain(header.meta.needed.into_keys())
        .collect();
    Ok(State::new(blobs))
}

/// Write `contents` from the store at `root` into a bundle at `out` (a delta holding
/// only what `base` lacks, when given; in parts `<out>.001`, ... of at most `split`
/// bytes each, when given), and its state beside it (`<out>.state.json`). Each file
/// appears under its name only once complete.
pub fn write(
    root: &Path,
    contents: &Contents,
    base: Option<&State>,
    out: &Path,
    split: Option<u64>,
    reporter: &dyn Reporter,
) -> Result<Exported, BundleError> {
    let set = set_identity(contents.blobs.iter().map(|(d, _)| d));
    let (carried, needed) = contents.divide(base);
    let meta = Meta {
        part: None,
        format: FORMAT,
        set: set.clone(),
        base: base.map(|b| b.set.clone()),
        carried,
        needed,
    };
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_owned()),
        manifests: contents
            .images
            .iter()
            .map(|i| {
                let mut d = i.descriptor.clone();
                match &i.tag {
                    Some(tag) => d
                        .annotations
                        .insert(REF_NAME.to_owned(), format!("{}:{tag}", i.repo)),
                    None => d.annotations.insert(REPOSITORY.to_owned(), i.repo.clone()),
                };
                d
            })
            .collect(),
        annotations: BTreeMap::new(),
    };
    let out = &std::path::absolute(out).map_err(BundleError::io("resolve", out))?;
    let dir = out.parent().unwrap_or(Path::new("/")).to_owned();
    let index = serde_json::to_vec(&index).expect("an index serialises");
    let blobs: Vec<_> = contents
        .blobs
        .iter()
        .filter(|(d, _)| meta.carried.contains_key(d))
        .collect();
    let parts = match split {
        Some(limit) => {
            // The bundle document as every part has it (its part numbers aside).
            let meta_len = serde_json::to_vec(&meta).expect("serialises").len();
            split_parts(&blobs, limit, (index.len() + meta_len + 64) as u64)
        }
        None => vec![blobs],
    };
    let compressed = out.extension().is_some_and(|e| e == "zst");
    let count = parts.len();
    let mut files = Vec::with_capacity(count);
    let mut bytes = 0;
    for (n, blobs) in parts.iter().enumerate() {
        let (path, part) = match split {
            Some(_) => (
                part_path(out, n + 1),
                Some(Part {
                    number: n + 1,
                    of: count,
                }),
            ),
            None => (out.to_owned(), None),
        };
        let meta = Meta {
            part,
            ..meta.clone()
        };
        let documents = [
            (INDEX_FILE, index.clone()),
            (
                META_FILE,
                serde_json::to_vec(&meta).expect("the bundle document serialises"),
            ),
        ];
        bytes += write_file(&path, &dir, &documents, blobs, root, compressed, reporter)?;
        files.push(path);
    }
    let state_path = state_path(out);
    let state = State::new(contents.blobs.iter().map(|(d, _)| d.clone()).collect());
    // Its directory is synced after this rename, and so the bundle's names with it.
    write_atomic(
        &dir,
        &state_path,
        &serde_json::to_vec(&state).expect("a state serialises"),
    )?;
    Ok(Exported {
        files,
        state: state_path,
        images: contents.images.len(),
        set,
        base: meta.base,
        carried: meta.carried.len(),
        carried_bytes: meta.carried.values().sum(),
        needed: meta.needed.len(),
        needed_bytes: meta.needed.values().sum(),
        bytes,
    })
}

/// Part `n` of a bundle split at `out`: `<out>.001`, ...
pub fn part_path(out: &Path, n: usize) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(format!(".{n:03}"));
    PathBuf::from(name)
}

/// `blobs` in parts of at most `limit` tar bytes each, `documents` bytes of index.json
/// and the bundle document included in each; a blob larger than that has a part of its
/// own.
fn split_parts<'a>(
    blobs: &[&'a (Digest, u64)],
    limit: u64,
    documents: u64,
) -> Vec<Vec<&'a (Digest, u64)>> {
    let entry = |size: u64| 512 + size.div_ceil(512) * 512;
    // oci-layout, the two documents (two entries), and tar's two closing blocks.
    let fixed = entry(OCI_LAYOUT.len() as u64) + entry(documents) + 512 + 1024;
    let mut parts = vec![Vec::new()];
    let mut used = fixed;
    for blob in blobs {
        let last = parts.last_mut().expect("one part at least");
        if !last.is_empty() && used + entry(blob.1) > limit {
            parts.push(Vec::new());
            used = fixed;
        }
        parts.last_mut().expect("one part at least").push(*blob);
        used += entry(blob.1);
    }
    parts
}

/// One bundle file: the tar (zstd-compressed when `compressed`) written aside, made
/// durable, then renamed to `path`. Returns its size.
fn write_file(
    path: &Path,
    dir: &Path,
    documents: &[(&str, Vec<u8>)],
    blobs: &[&(Digest, u64)],
    root: &Path,
    compressed: bool,
    reporter: &dyn Reporter,
) -> Result<u64, BundleError> {
    let temp = tempfile::Builder::new()
        .prefix(".static-registry-export-")
        .tempfile_in(dir)
        .map_err(BundleError::io("create a file in", dir))?;
    let file = temp
        .reopen()
        .map_err(BundleError::io("open", temp.path()))?;
    // A bundle is for others to read, as the store's files are.
    file.set_permissions(std::fs::Permissions::from_mode(
        crate::store::modes::FILE_MODE,
    ))
    .map_err(BundleError::io("chmod", temp.path()))?;
    let pool = pool_dir(root);
    let written = if compressed {
        (|| {
            let mut encoder = zstd::Encoder::new(file, ZSTD_LEVEL)?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            encoder.multithread(threads as u32)?;
            write_tar(encoder, documents, blobs, &pool, reporter)?
                .finish()
                .map(drop)
        })()
    } else {
        write_tar(file, documents, blobs, &pool, reporter).map(drop)
    };
    written.map_err(BundleError::io("write", temp.path()))?;
    // Durable before it has its name.
    let file = temp.as_file();
    file.sync_all()
        .map_err(BundleError::io("sync", temp.path()))?;
    let bytes = file
        .metadata()
        .map_err(BundleError::io("stat", temp.path()))?
        .len();
    temp.persist(path)
        .map_err(|e| BundleError::io("rename into", path)(e.error))?;
    Ok(bytes)
}

/// The tar of a bundle into `sink`, which it returns (for a compressor to finish).
fn write_tar<W: Write>(
    sink: W,
    documents: &[(&str, Vec<u8>)],
    blobs: &[&(Digest, u64)],
    pool: &Path,
    reporter: &dyn Reporter,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(COPY_BUFFER, sink));
    append(&mut tar, LAYOUT_FILE, OCI_LAYOUT.len() as u64, OCI_LAYOUT)?;
    for (name, bytes) in documents {
        append(&mut tar, name, bytes.len() as u64, &bytes[..])?;
    }
    for (digest, size) in blobs {
        let file = File::open(pool.join(digest.hex()))?;
        reporter.blob_started(digest, *size, 0);
        let progress = Progress {
            inner: file,
            digest,
            reporter,
        };
        append(
            &mut tar,
            &format!("blobs/sha256/{}", digest.hex()),
            *size,
            progress,
        )?;
        reporter.blob_finished(digest);
    }
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())
}

/// A blob's reader that tells the reporter how far it got.
struct Progress<'a, R> {
    inner: R,
    digest: &'a Digest,
    reporter: &'a dyn Reporter,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reporter.blob_progress(self.digest, n as u64);
        Ok(n)
    }
}

/// `<bundle>.state.json`.
pub fn state_path(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".state.json");
    PathBuf::from(name)
}

/// One regular file entry, owned by root, mode 0644, time 0: a store exported twice
/// gives the same bytes.
fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data.take(size))
}

// ---- import ----------------------------------------------------------------------------

/// What a bundle is read from: a file, which skips blobs the store has by seeking, or a
/// decompressor, which skips them by reading.
trait Input: Read + Seek {}
impl<R: Read + Seek> Input for R {}

/// A bundle file opened for reading: plain, or zstd by its first bytes (not its name).
fn open(path: &Path) -> Result<tar::Archive<Box<dyn Input>>, BundleError> {
    let mut file = File::open(path).map_err(BundleError::io("open", path))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .and_then(|n| file.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(BundleError::io("read", path))?;
    let input: Box<dyn Input> = if n == 4 && magic == ZSTD_MAGIC {
        let decoder = zstd::Decoder::new(file).map_err(BundleError::io("decompress", path))?;
        Box::new(Forward {
            inner: decoder,
            pos: 0,
        })
    } else {
        Box::new(BufReader::with_capacity(COPY_BUFFER, file))
    };
    Ok(tar::Archive::new(input))
}

/// A stream that seeks forwards only, by reading: what tar needs to skip an entry.
struct Forward<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Forward<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for Forward<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Current(n) if n >= 0 => {
                self.pos += io::copy(&mut (&mut self.inner).take(n as u64), &mut io::sink())?;
                Ok(self.pos)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a compressed bundle is read forwards only",
            )),
        }
    }
}

/// The documents at the start of the bundle at `path`.
pub fn read_header(path: &Path) -> Result<Header, BundleError> {
    let mut archive = open(path)?;
    let mut entries = archive
        .entries_with_seek()
        .map_err(BundleError::io("read", path))?;
    header_from(path, &mut entries)
}

fn not_bundle(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::NotBundle {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The three documents, in order, each checked: names and tags valid, every image's
/// digest listed with its size, the set's identity as stated.
fn header_from<R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'_, R>,
) -> Result<Header, BundleError> {
    let mut next = |name: &str| -> Result<Vec<u8>, BundleError> {
        let mut entry = entries
            .next()
            .ok_or_else(|| not_bundle(path, format!("it ends before {name}")))?
            .map_err(BundleError::io("read", path))?;
        let found = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if found != name || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(not_bundle(
                path,
                format!(
                    "its entries must begin with {LAYOUT_FILE}, {INDEX_FILE} and {META_FILE}; found {found:?} where {name} belongs"
                ),
            ));
        }
        if entry.size() > MAX_DOCUMENT {
            return Err(not_bundle(
                path,
                format!(
                    "{name} is {} bytes, more than the {MAX_DOCUMENT} allowed",
                    entry.size()
                ),
            ));
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(BundleError::io("read", path))?;
        Ok(bytes)
    };
    next(LAYOUT_FILE)?;
    let index: ImageIndex = serde_json::from_slice(&next(INDEX_FILE)?)
        .map_err(|e| not_bundle(path, format!("{INDEX_FILE}: {e}")))?;
    let meta: Meta = serde_json::from_slice(&next(META_FILE)?)
        .map_err(|e| not_bundle(path, format!("{META_FILE}: {e}")))?;
    if meta.format != FORMAT {
        return Err(not_bundle(
            path,
            format!(
                "it is format {} and this static-registry reads {FORMAT}: use a newer static-registry",
                meta.format
            ),
        ));
    }
    let listed = |d: &Digest| meta.carried.get(d).or_else(|| meta.needed.get(d)).copied();
    if set_identity(meta.carried.keys().chain(meta.needed.keys())) != meta.set {
        return Err(not_bundle(
            path,
            format!("{META_FILE}: its blobs are not set {}", meta.set),
        ));
    }
    let mut images = Vec::with_capacity(index.manifests.len());
    for mut descriptor in index.manifests {
        let bad = |reason: String| not_bundle(path, format!("{INDEX_FILE}: {reason}"));
        let (repo, tag) = match (
            descriptor.annotations.remove(REF_NAME),
            descriptor.annotations.remove(REPOSITORY),
        ) {
            (Some(name), None) => match name.rsplit_once(':') {
                Some((repo, tag)) => (repo.to_owned(), Some(tag.to_owned())),
                None => return Err(bad(format!("ref name {name:?} is not <name>:<tag>"))),
            },
            (None, Some(repo)) => (repo, None),
            _ => {
                return Err(bad(format!(
                    "entry {} needs either {REF_NAME} or {REPOSITORY}",
                    descriptor.digest
                )));
            }
        };
        validate_repository(&repo).map_err(|e| bad(e.to_string()))?;
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(|e| bad(e.to_string()))?;
        }
        if descriptor.digest.algorithm() != "sha256"
            || listed(&descriptor.digest) != Some(descriptor.size)
        {
            return Err(bad(format!(
                "{repo}: {} of {} bytes is not among the blobs {META_FILE} lists",
                descriptor.digest, descriptor.size
            )));
        }
        images.push(Image {
            repo,
            tag,
            descriptor,
        });
    }
    Ok(Header { meta, images })
}

/// What receiving a bundle's blobs did.
#[derive(Debug, Default, Serialize)]
pub struct Received {
    /// Blobs written into the pool.
    pub written: usize,
    pub written_bytes: u64,
    /// Blobs the store had (an earlier import, a fetch, an interrupted run).
    pub present: usize,
}

/// A bundle to import: its documents, and its file (or every part of it).
#[derive(Debug)]
pub struct Bundle {
    pub header: Header,
    pub files: Vec<PathBuf>,
}

impl Bundle {
    /// How messages name it: its file, or its first part.
    pub fn path(&self) -> &Path {
        &self.files[0]
    }
}

/// The bundles the files at `paths` make: each file read up to its documents, the parts
/// of a split bundle gathered (in any order given; every part must be there), a file
/// given twice taken once.
pub fn gather(paths: &[PathBuf]) -> Result<Vec<Bundle>, BundleError> {
    let mut bundles: Vec<(Bundle, BTreeMap<usize, PathBuf>)> = Vec::new();
    for path in paths {
        let header = read_header(path)?;
        let same = bundles.iter_mut().find(|(b, _)| {
            b.header.meta.set == header.meta.set && b.header.meta.base == header.meta.base
        });
        let number = header.meta.part.map_or(1, |p| p.number);
        match same {
            Some((_, parts)) => {
                parts.entry(number).or_insert_with(|| path.clone());
            }
            None => bundles.push((
                Bundle {
                    header,
                    files: Vec::new(),
                },
                BTreeMap::from([(number, path.clone())]),
            )),
        }
    }
    bundles
        .into_iter()
        .map(|(mut bundle, parts)| {
            let of = bundle.header.meta.part.map_or(1, |p| p.of);
            if let Some(missing) = (1..=of).find(|n| !parts.contains_key(n)) {
                return Err(BundleError::PartMissing {
                    path: parts.values().next().expect("one part").clone(),
                    missing,
                    of,
                });
            }
            bundle.files = parts.into_values().collect();
            Ok(bundle)
        })
        .collect()
}

/// Read `bundle` into the store's pool: a delta's base first (every blob it takes from it
/// must be in the store), then each file's documents (checked as [`read_header`] does)
/// and blobs, each verified against its digest and declared size while it streams.
/// Nothing is published here; the caller does that once this returns.
pub fn receive(
    store: &Store,
    bundle: &Bundle,
    reporter: &dyn Reporter,
) -> Result<Received, BundleError> {
    let meta = &bundle.header.meta;
    let absent: Vec<&Digest> = meta
        .needed
        .keys()
        .filter(|d| !store.has_blob(d).unwrap_or(false))
        .collect();
    if let Some(first) = absent.first() {
        return Err(BundleError::BaseMissing {
            path: bundle.path().to_owned(),
            base: meta
                .base
                .as_ref()
                .map_or("(not named)".to_owned(), Digest::to_string),
            needed: meta.needed.len(),
            missing: absent.len(),
            first: (*first).clone(),
        });
    }
    let mut received = Received::default();
    let mut seen = HashSet::new();
    for path in &bundle.files {
        receive_file(store, path, meta, &mut seen, &mut received, reporter)?;
    }
    let path = bundle.path();
    if seen.len() < meta.carried.len() {
        return Err(truncated(path, meta, &seen));
    }
    // Every image must reach only listed blobs (what the pool now holds was verified).
    let pool = store.pool_dir();
    for image in &bundle.header.images {
        for d in reachable_in(&pool, std::slice::from_ref(&image.descriptor)) {
            if d.is_foreign() {
                continue;
            }
            if meta
                .carried
                .get(&d.digest)
                .or_else(|| meta.needed.get(&d.digest))
                != Some(&d.size)
            {
                return Err(BundleError::Unlisted {
                    path: path.to_owned(),
                    image: image.label(),
                    digest: d.digest,
                });
            }
        }
    }
    Ok(received)
}

/// One file of a bundle into the pool; `seen` gathers the blobs of all its files.
fn receive_file(
    store: &Store,
    path: &Path,
    meta: &Meta,
    seen: &mut HashSet<Digest>,
    received: &mut Received,
    reporter: &dyn Reporter,
) -> Result<(), BundleError> {
    let mut archive = open(path)?;
    let mut entries = archive
        .entries_with_seek()
        .map_err(BundleError::io("read", path))?;
    let own = header_from(path, &mut entries)?;
    if own.meta.set != meta.set || own.meta.base != meta.base {
        return Err(not_bundle(path, "it changed since it was first read"));
    }
    let mut buf = vec![0u8; COPY_BUFFER];
    for entry in entries {
        let mut entry = entry.map_err(|e| truncated_or(path, meta, seen, e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason: String| BundleError::Entry {
            path: path.to_owned(),
            entry: name.clone(),
            reason,
        };
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(refuse(format!(
                "it is a {kind:?} entry, and a bundle holds only regular files"
            )));
        }
        let digest = name
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| Digest::sha256_from_hex(hex).ok())
            .ok_or_else(|| refuse("a bundle's blobs are blobs/sha256/<64 hex digits>, and nothing else follows the documents".to_owned()))?;
        let Some(&size) = meta.carried.get(&digest) else {
            return Err(refuse(format!("{META_FILE} does not list it")));
        };
        if entry.size() != size {
            return Err(refuse(format!(
                "it is {} bytes, and {META_FILE} says {size}",
                entry.size()
            )));
        }
        if !seen.insert(digest.clone()) {
            return Err(refuse("it is in the bundle twice".to_owned()));
        }
        let blob_error = |source| BundleError::Blob {
            path: path.to_owned(),
            digest: digest.clone(),
            source,
        };
        let mut partial = match store.claim_blob(&digest, size).map_err(blob_error)? {
            BlobClaim::Present => {
                received.present += 1;
                continue;
            }
            BlobClaim::Write(partial) => partial,
        };
        // An interrupted import left this much, already hashed: skip it in the tar.
        let offset = partial.offset();
        io::copy(&mut (&mut entry).take(offset), &mut io::sink())
            .map_err(|e| truncated_or(path, meta, seen, e))?;
        reporter.blob_started(&digest, size, offset);
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| truncated_or(path, meta, seen, e))?;
            if n == 0 {
                break;
            }
            partial.write(&buf[..n]).map_err(blob_error)?;
            reporter.blob_progress(&digest, n as u64);
        }
        if partial.offset() < size {
            return Err(truncated(path, meta, seen));
        }
        partial.commit().map_err(blob_error)?;
        reporter.blob_finished(&digest);
        received.written += 1;
        received.written_bytes += size;
    }
    Ok(())
}

fn truncated(path: &Path, meta: &Meta, seen: &HashSet<Digest>) -> BundleError {
    let missing: Vec<&Digest> = meta.carried.keys().filter(|d| !seen.contains(*d)).collect();
    BundleError::Truncated {
        path: path.to_owned(),
        carried: meta.carried.len(),
        missing: missing.len().max(1),
        first: missing
            .first()
            .map_or_else(|| seen.iter().next().cloned(), |d| Some((*d).clone()))
            .expect("a bundle that ends early lists a blob"),
    }
}

/// A read error: the file ended early (truncated), or another I/O failure.
fn truncated_or(path: &Path, meta: &Meta, seen: &HashSet<Digest>, e: io::Error) -> BundleError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        truncated(path, meta, seen)
    } else {
        BundleError::io("read", path)(e)
    }
}

/// Record every blob the store holds in its state file, for `export --since`.
pub fn write_store_state(store: &Store) -> Result<State, BundleError> {
    let pool = store.pool_dir();
    let mut blobs = BTreeSet::new();
    for entry in std::fs::read_dir(&pool).map_err(BundleError::io("list", &pool))? {
        let entry = entry.map_err(BundleError::io("list", &pool))?;
        if let Some(d) = entry
            .file_name()
            .to_str()
            .and_then(|h| Digest::sha256_from_hex(h).ok())
        {
            blobs.insert(d);
        }
    }
    let state = State::new(blobs);
    let bytes = serde_json::to_vec(&state).expect("a state serialises");
    write_atomic(&store.tmp_dir(), &store.root().join(STORE_STATE), &bytes)?;
    Ok(state)
}
