//! Deterministic image fixtures covering the manifest shapes a mirror must
//! handle. Built once per test process (`Fixtures::get`), pushed into any number
//! of registries (`Fixtures::push`).
//!
//! | repo          | tags              | shape                                              |
//! |---------------|-------------------|----------------------------------------------------|
//! | base/alpine   | 3.19, latest      | Docker v2s2: base layer                            |
//! | apps/web      | v1                | OCI manifest: base layer + web layer               |
//! | apps/web      | sha256-<web hex>  | OCI index (referrers tag schema) → SBOM artifact   |
//! | apps/api      | v1                | OCI manifest: base layer + api layer (~300 KiB)    |
//! | docker/multi  | v1                | Docker manifest list: linux/amd64, linux/arm64     |
//! | oci/multi     | 1.0, latest       | OCI index: linux/amd64, linux/arm64/v8, ppc64le    |
//! | a/b/c         | 1                 | OCI manifest                                       |
//! | oci/zstd      | 1                 | OCI manifest with a `tar+zstd` layer               |
//! | many/tags     | t000..t054, latest| 4 distinct OCI manifests                           |
//! | foreign/win   | 1                 | Docker v2s2 with a foreign layer (blob not pushed) |
//!
//! The SBOM artifact (`apps/web`, by digest only) has `subject` = `apps/web:v1`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::sync::OnceLock;

use futures::stream::{self, StreamExt};
use serde_json::{Value, json};

use super::registry::Registry;
use super::{sha256_digest, zstd};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const SBOM_ARTIFACT_TYPE: &str = "application/vnd.example.sbom.v1";
pub const SBOM_LAYER: &str = "application/vnd.example.sbom.v1+json";
pub const FOREIGN_URL: &str = "https://example.invalid/layer";
/// Accept header a client must send to distribution 2.8: without it (or with
/// `*/*`) OCI manifests/indexes are 404 and Docker v2s2 / lists come back
/// converted to schema1 with a different digest.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Parallel uploads per wave; enough to hide per-request latency without
/// swamping a 2-core CI machine.
const PUSH_CONCURRENCY: usize = 8;

/// Fixed timestamps keep every byte (and so every digest) stable across runs.
const MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";

/// One manifest as pushed: where it lives, its exact bytes and what it reaches.
#[derive(Clone, Debug)]
pub struct ManifestFixture {
    pub repo: String,
    /// Tags pointing at it; empty when pushed by digest only (index children,
    /// the SBOM artifact).
    pub tags: Vec<String>,
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// Config and layer digests reachable from this manifest that exist in the
    /// registry (through children for an index), deduplicated, in order.
    pub blobs: Vec<String>,
    /// Layers referenced but deliberately absent (foreign / non-distributable).
    pub foreign_blobs: Vec<String>,
    /// Child manifest digests (index / manifest list only).
    pub children: Vec<String>,
    /// `os/arch[/variant]` when this manifest is an index child.
    pub platform: Option<String>,
}

impl ManifestFixture {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

#[derive(Clone, Debug)]
pub struct Fixtures {
    /// In push order: children before their index, subjects before referrers.
    pub manifests: Vec<ManifestFixture>,
    /// Every blob that is pushed (somewhere), by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The gzip layer shared by `base/alpine`, `apps/web` and `apps/api`.
    pub base_layer: String,
    /// The zstd layer of `oci/zstd:1`, and its uncompressed tar digest.
    pub zstd_layer: String,
    pub zstd_diff_id: String,
    /// The foreign layer of `foreign/win:1` (never pushed), and its bytes.
    pub foreign_layer: String,
    pub foreign_layer_bytes: Vec<u8>,
    /// The SBOM artifact manifest in `apps/web` and its subject (`apps/web:v1`).
    pub artifact: String,
    pub artifact_subject: String,
}

pub const BASE_REPOS: [&str; 3] = ["base/alpine", "apps/web", "apps/api"];

impl Fixtures {
    /// The fixture set, built on first use and shared by the whole test process.
    pub fn get() -> &'static Fixtures {
        static F: OnceLock<Fixtures> = OnceLock::new();
        F.get_or_init(build)
    }

    /// Push every fixture into `reg` and describe what was pushed.
    ///
    /// Three concurrent waves, because registries check references on
    /// manifest PUT: blobs, then image manifests, then indexes (whose
    /// children must exist).
    pub async fn push(reg: &Registry) -> Fixtures {
        let f = Self::get();
        let blobs: BTreeSet<(&str, &str)> = f
            .manifests
            .iter()
            .filter(|m| !m.is_index())
            .flat_map(|m| m.blobs.iter().map(|d| (m.repo.as_str(), d.as_str())))
            .collect();
        stream::iter(blobs)
            .for_each_concurrent(PUSH_CONCURRENCY, |(repo, d)| async move {
                reg.push_blob(repo, &f.blobs[d]).await;
            })
            .await;
        for indexes in [false, true] {
            let refs = f
                .manifests
                .iter()
                .filter(|m| m.is_index() == indexes)
                .flat_map(|m| {
                    // Untagged manifests are pushed by digest.
                    let refs = if m.tags.is_empty() {
                        vec![m.digest.as_str()]
                    } else {
                        m.tags.iter().map(String::as_str).collect()
                    };
                    refs.into_iter().map(move |r| (m, r))
                });
            stream::iter(refs)
                .for_each_concurrent(PUSH_CONCURRENCY, |(m, r)| async move {
                    reg.push_manifest(&m.repo, r, &m.media_type, &m.bytes).await;
                })
                .await;
        }
        f.clone()
    }

    /// The manifest `repo:tag` points at; panics if there is none.
    pub fn manifest(&self, repo: &str, tag: &str) -> &ManifestFixture {
        self.manifests
            .iter()
            .find(|m| m.repo == repo && m.tags.iter().any(|t| t == tag))
            .unwrap_or_else(|| panic!("no fixture {repo}:{tag}"))
    }

    /// The manifest `repo@digest`; panics if there is none.
    pub fn by_digest(&self, repo: &str, digest: &str) -> &ManifestFixture {
        self.manifests
            .iter()
            .find(|m| m.repo == repo && m.digest == digest)
            .unwrap_or_else(|| panic!("no fixture {repo}@{digest}"))
    }

    /// Every `(repo, tag, manifest digest)`, sorted.
    pub fn all_refs(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .manifests
            .iter()
            .flat_map(|m| {
                m.tags
                    .iter()
                    .map(|t| (m.repo.clone(), t.clone(), m.digest.clone()))
            })
            .collect();
        v.sort();
        v
    }

    pub fn repos(&self) -> Vec<String> {
        let set: BTreeSet<_> = self.manifests.iter().map(|m| m.repo.clone()).collect();
        set.into_iter().collect()
    }

    /// Sorted tags of `repo`.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let mut v: Vec<_> = self
            .manifests
            .iter()
            .filter(|m| m.repo == repo)
            .flat_map(|m| m.tags.iter().cloned())
            .collect();
        v.sort();
        v
    }

    /// All blob digests present in `repo`.
    pub fn repo_blobs(&self, repo: &str) -> BTreeSet<String> {
        self.manifests
            .iter()
            .filter(|m| m.repo == repo)
            .flat_map(|m| m.blobs.iter().cloned())
            .collect()
    }

    pub fn blob(&self, digest: &str) -> &[u8] {
        self.blobs
            .get(digest)
            .unwrap_or_else(|| panic!("no fixture blob {digest}"))
    }
}

// ---------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Docker,
    Oci,
}

#[derive(Clone, Copy)]
enum Compression {
    Gzip,
    Zstd,
}

struct Layer {
    /// Compressed bytes: the blob.
    blob: Vec<u8>,
    digest: String,
    /// sha256 of the uncompressed tar, for the config's `rootfs.diff_ids`.
    diff_id: String,
    compression: Compression,
    foreign: bool,
}

impl Layer {
    fn new(files: &[(&str, Vec<u8>)], compression: Compression) -> Layer {
        let tar = tar_of(files);
        let blob = match compression {
            Compression::Gzip => gzip(&tar),
            Compression::Zstd => zstd::encode_stored(&tar),
        };
        Layer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            blob,
            compression,
            foreign: false,
        }
    }

    fn media_type(&self, format: Format) -> &'static str {
        match (format, self.compression, self.foreign) {
            (Format::Docker, _, true) => DOCKER_FOREIGN_LAYER,
            (Format::Docker, _, false) => DOCKER_LAYER_GZIP,
            (Format::Oci, Compression::Gzip, _) => OCI_LAYER_GZIP,
            (Format::Oci, Compression::Zstd, _) => OCI_LAYER_ZSTD,
        }
    }
}

#[derive(Clone, Copy)]
struct Platform {
    os: &'static str,
    arch: &'static str,
    variant: Option<&'static str>,
}

const AMD64: Platform = Platform {
    os: "linux",
    arch: "amd64",
    variant: None,
};

impl Platform {
    fn json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.arch});
        if let Some(var) = self.variant {
            v["variant"] = json!(var);
        }
        v
    }

    fn label(&self) -> String {
        match self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.arch),
            None => format!("{}/{}", self.os, self.arch),
        }
    }
}

/// A manifest's own descriptor, for use in an index or as a subject.
struct Desc {
    media_type: String,
    digest: String,
    size: usize,
}

#[derive(Default)]
struct Builder {
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: Vec<ManifestFixture>,
}

impl Builder {
    fn add_blob(&mut self, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        self.blobs.insert(d.clone(), bytes.to_vec());
        d
    }

    /// A single-platform image; `name` ends up in the config so that images
    /// with identical layers still get distinct configs and digests.
    fn image(
        &mut self,
        repo: &str,
        tags: &[&str],
        format: Format,
        platform: Platform,
        name: &str,
        layers: &[&Layer],
    ) -> Desc {
        let config = config_json(platform, name, layers);
        let (manifest_type, config_type) = match format {
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
        };
        let config_digest = self.add_blob(&config);
        let mut blobs = vec![config_digest.clone()];
        let mut foreign = Vec::new();
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| {
                let mut d = json!({
                    "mediaType": l.media_type(format),
                    "size": l.blob.len(),
                    "digest": l.digest,
                });
                if l.foreign {
                    d["urls"] = json!([FOREIGN_URL]);
                    foreign.push(l.digest.clone());
                } else {
                    self.add_blob(&l.blob);
                    blobs.push(l.digest.clone());
                }
                d
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": config.len(), "digest": config_digest},
            "layers": layer_descs,
        });
        // Docker tooling emits indented JSON, OCI tools mostly compact: both
        // make sure nothing re-serialises manifests (digests are over bytes).
        let bytes = match format {
            Format::Docker => serde_json::to_vec_pretty(&manifest),
            Format::Oci => serde_json::to_vec(&manifest),
        }
        .expect("serialize manifest");
        self.record(ManifestFixture {
            repo: repo.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            digest: sha256_digest(&bytes),
            media_type: manifest_type.to_string(),
            bytes,
            blobs: dedup(blobs),
            foreign_blobs: foreign,
            children: Vec::new(),
            platform: None,
        })
    }

    /// An index / manifest list over per-platform images pushed by digest.
    fn index(
        &mut self,
        repo: &str,
        tags: &[&str],
        format: Format,
        images: &[(Platform, &Layer)],
    ) -> Desc {
        let mut entries = Vec::new();
        let mut children = Vec::new();
        for (p, layer) in images {
            let name = format!("{repo} {}", p.label());
            let d = self.image(repo, &[], format, *p, &name, &[layer]);
            self.manifests.last_mut().expect("just pushed").platform = Some(p.label());
            entries.push(json!({
                "mediaType": d.media_type,
                "size": d.size,
                "digest": d.digest,
                "platform": p.json(),
            }));
            children.push(d.digest);
        }
        let media_type = match format {
            Format::Docker => DOCKER_MANIFEST_LIST,
            Format::Oci => OCI_INDEX,
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": entries,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("serialize index");
        self.index_fixture(repo, tags, media_type, bytes, children)
    }

    fn index_fixture(
        &mut self,
        repo: &str,
        tags: &[&str],
        media_type: &str,
        bytes: Vec<u8>,
        children: Vec<String>,
    ) -> Desc {
        let blobs = children
            .iter()
            .flat_map(|c| {
                let m = self
                    .manifests
                    .iter()
                    .find(|m| m.repo == repo && &m.digest == c)
                    .expect("child recorded first");
                m.blobs.clone()
            })
            .collect();
        self.record(ManifestFixture {
            repo: repo.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            digest: sha256_digest(&bytes),
            media_type: media_type.to_string(),
            bytes,
            blobs: dedup(blobs),
            foreign_blobs: Vec::new(),
            children,
            platform: None,
        })
    }

    fn record(&mut self, m: ManifestFixture) -> Desc {
        let d = Desc {
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
            size: m.bytes.len(),
        };
        self.manifests.push(m);
        d
    }

    /// An OCI 1.1 artifact (image manifest with `artifactType`, empty config
    /// and `subject`), pushed by digest, plus the referrers-tag-schema index
    /// `sha256-<subject hex>` that registries without the referrers API use.
    fn sbom_artifact(&mut self, repo: &str, subject: &Desc) -> String {
        let empty = self.add_blob(b"{}");
        let sbom = serde_json::to_vec(&json!({
            "spdxVersion": "SPDX-2.3",
            "name": repo,
            "packages": [{"name": "web", "versionInfo": "1.0"}],
        }))
        .expect("serialize sbom");
        let sbom_digest = self.add_blob(&sbom);
        let annotations = json!({"org.opencontainers.image.created": CREATED});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM_ARTIFACT_TYPE,
            "config": {"mediaType": OCI_EMPTY, "size": 2, "digest": empty, "data": "e30="},
            "layers": [{"mediaType": SBOM_LAYER, "size": sbom.len(), "digest": sbom_digest}],
            "subject": {"mediaType": subject.media_type, "size": subject.size, "digest": subject.digest},
            "annotations": annotations,
        });
        let bytes = serde_json::to_vec(&manifest).expect("serialize artifact");
        let art = self.record(ManifestFixture {
            repo: repo.to_string(),
            tags: Vec::new(),
            digest: sha256_digest(&bytes),
            media_type: OCI_MANIFEST.to_string(),
            bytes,
            blobs: vec![empty, sbom_digest],
            foreign_blobs: Vec::new(),
            children: Vec::new(),
            platform: None,
        });
        let referrers = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": art.media_type,
                "size": art.size,
                "digest": art.digest,
                "artifactType": SBOM_ARTIFACT_TYPE,
                "annotations": annotations,
            }],
        }))
        .expect("serialize referrers index");
        let tag = subject.digest.replacen(':', "-", 1);
        self.index_fixture(
            repo,
            &[&tag],
            OCI_INDEX,
            referrers,
            vec![art.digest.clone()],
        );
        art.digest
    }
}

fn build() -> Fixtures {
    let mut b = Builder::default();

    let base = Layer::new(
        &[
            ("etc/os-release", b"ID=itbase\nVERSION_ID=3.19\n".to_vec()),
            ("bin/hello", b"#!/bin/sh\necho hello\n".to_vec()),
            ("etc/motd", b"shared base layer\n".to_vec()),
        ],
        Compression::Gzip,
    );
    let web = Layer::new(
        &[("srv/web/index.html", b"<h1>web</h1>\n".to_vec())],
        Compression::Gzip,
    );
    // Bigger, incompressible file so at least one blob spans many reads.
    let api = Layer::new(
        &[
            ("srv/api/config.json", b"{\"port\":8080}\n".to_vec()),
            ("srv/api/blob.bin", pseudo_random(300 * 1024, 0x5eed)),
        ],
        Compression::Gzip,
    );

    b.image(
        "base/alpine",
        &["3.19", "latest"],
        Format::Docker,
        AMD64,
        "base/alpine",
        &[&base],
    );
    let web_desc = b.image(
        "apps/web",
        &["v1"],
        Format::Oci,
        AMD64,
        "apps/web",
        &[&base, &web],
    );
    b.image(
        "apps/api",
        &["v1"],
        Format::Oci,
        AMD64,
        "apps/api",
        &[&base, &api],
    );
    let artifact = b.sbom_artifact("apps/web", &web_desc);

    let arch_layer = |arch: &str| {
        Layer::new(
            &[("etc/arch", format!("{arch}\n").into_bytes())],
            Compression::Gzip,
        )
    };
    let (amd, arm, ppc) = (
        arch_layer("amd64"),
        arch_layer("arm64"),
        arch_layer("ppc64le"),
    );
    let arm64 = Platform {
        os: "linux",
        arch: "arm64",
        variant: None,
    };
    let arm64v8 = Platform {
        variant: Some("v8"),
        ..arm64
    };
    let ppc64le = Platform {
        os: "linux",
        arch: "ppc64le",
        variant: None,
    };
    b.index(
        "docker/multi",
        &["v1"],
        Format::Docker,
        &[(AMD64, &amd), (arm64, &arm)],
    );
    b.index(
        "oci/multi",
        &["1.0", "latest"],
        Format::Oci,
        &[(AMD64, &amd), (arm64v8, &arm), (ppc64le, &ppc)],
    );

    let nested = Layer::new(&[("a/b/c", b"nested\n".to_vec())], Compression::Gzip);
    b.image("a/b/c", &["1"], Format::Oci, AMD64, "a/b/c", &[&nested]);

    let zst = Layer::new(
        &[
            ("zstd/readme", b"this layer is zstd-framed\n".to_vec()),
            ("zstd/data", pseudo_random(4096, 0x2575)),
        ],
        Compression::Zstd,
    );
    b.image("oci/zstd", &["1"], Format::Oci, AMD64, "oci/zstd", &[&zst]);

    // 55 numbered tags plus `latest`, spread round-robin over 4 manifests.
    let many = Layer::new(&[("many/tags", b"many tags\n".to_vec())], Compression::Gzip);
    let tag_names: Vec<String> = (0..55).map(|i| format!("t{i:03}")).collect();
    for k in 0..4 {
        let mut tags: Vec<&str> = tag_names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == k)
            .map(|(_, t)| t.as_str())
            .collect();
        if k == 0 {
            tags.push("latest");
        }
        b.image(
            "many/tags",
            &tags,
            Format::Oci,
            AMD64,
            &format!("many/tags #{k}"),
            &[&many],
        );
    }

    let win = Layer::new(
        &[("Files/app.exe", b"MZ fake\n".to_vec())],
        Compression::Gzip,
    );
    let mut foreign = Layer::new(
        &[("Windows/System32/kernel", b"not distributable\n".to_vec())],
        Compression::Gzip,
    );
    foreign.foreign = true;
    let win_platform = Platform {
        os: "windows",
        arch: "amd64",
        variant: None,
    };
    b.image(
        "foreign/win",
        &["1"],
        Format::Docker,
        win_platform,
        "foreign/win",
        &[&win, &foreign],
    );

    Fixtures {
        manifests: b.manifests,
        blobs: b.blobs,
        base_layer: base.digest,
        zstd_layer: zst.digest,
        zstd_diff_id: zst.diff_id,
        foreign_layer_bytes: foreign.blob.clone(),
        foreign_layer: foreign.digest,
        artifact,
        artifact_subject: web_desc.digest,
    }
}

fn config_json(p: Platform, name: &str, layers: &[&Layer]) -> Vec<u8> {
    let mut config = p.json();
    config["created"] = json!(CREATED);
    config["config"] = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "Labels": {"it.fixture": name},
    });
    config["rootfs"] = json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
    });
    config["history"] = layers
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"created": CREATED, "created_by": format!("it-harness {name} layer {i}")}))
        .collect();
    serde_json::to_vec(&config).expect("serialize config")
}

/// A tar with parent directories, fixed owner/mode/mtime: same bytes every run.
fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut dirs = BTreeSet::new();
    for (path, _) in files {
        let mut acc = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .expect("path")
            .1
        {
            acc.push_str(part);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    let mut t = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: usize| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size as u64);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for d in &dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        t.append_data(&mut h, d, std::io::empty()).expect("tar dir");
    }
    for (path, data) in files {
        let mode = if path.starts_with("bin/") {
            0o755
        } else {
            0o644
        };
        let mut h = header(tar::EntryType::Regular, mode, data.len());
        t.append_data(&mut h, path, data.as_slice())
            .expect("tar file");
    }
    t.into_inner().expect("finish tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // GzBuilder writes mtime 0 and no file name: deterministic header.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip write");
    enc.finish().expect("gzip finish")
}

/// Deterministic incompressible bytes (xorshift64), no RNG crate state involved.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|d| seen.insert(d.clone())).collect()
}
