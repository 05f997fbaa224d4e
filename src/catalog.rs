//! The catalog page: static HTML that people browsing a mirror read instead of
//! `_catalog` JSON. An index of the repositories, and per repository its tags (paginated)
//! with digest, kind, platforms, size, what refers to the image (signatures, SBOMs) and a
//! `docker pull` / `podman pull` line. No JavaScript.
//!
//! Pages are files of the store beside its other served documents, rendered by the
//! writer after a run for each repository whose index.json is newer than its pages (so a
//! run killed before rendering is caught up by the next); nginx and `serve` only read
//! them. The registry's address and the name prefix are not known here: the pages hold
//! placeholders that the front replaces per request.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{Kind, Manifest};
use crate::reference::Digest;
use crate::store::inventory::{self, TagInfo};
use crate::store::{
    self, CATALOG_FILE, INDEX_PAGE, PAGE_PREFIX, REFERRERS_DIR, SERVED_DIR, StoreError,
};

/// Tags per page.
pub const PAGE_SIZE: usize = 200;
/// Replaced by the front with the address clients pull from (host and port).
pub const HOST_PLACEHOLDER: &str = "__STATIC_REGISTRY_HOST__";
/// Replaced by the front with its name prefix and a slash (or nothing).
pub const PREFIX_PLACEHOLDER: &str = "__STATIC_REGISTRY_PREFIX__";

const TEMPLATES: [(&str, &str); 2] = [
    (
        "index.html",
        include_str!("../templates/catalog/index.html.tera"),
    ),
    (
        "repository.html",
        include_str!("../templates/catalog/repository.html.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("rendering the catalog pages")]
    Store(#[from] StoreError),
    #[error("catalog template {name}: {source}")]
    Template {
        name: &'static str,
        #[source]
        source: tera::Error,
    },
}

/// Render the pages that are older than what they show (or missing): the index when the
/// catalog changed, and each repository whose index.json changed. Cheap when nothing
/// did: two `stat`s per repository.
pub fn refresh(root: &Path) -> Result<(), CatalogError> {
    let tera = templates()?;
    let served = root.join(SERVED_DIR);
    let tmp = root.join(store::TMP_DIR);
    let mut names = Vec::new();
    for name in inventory::repository_names(root)? {
        if let Ok(dir) = store::repo_path(root, &name) {
            names.push((name, dir));
        }
    }
    let index_page = served.join(INDEX_PAGE);
    if stale(&index_page, &served.join(CATALOG_FILE)) {
        let list: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        let mut ctx = context();
        ctx.insert("repositories", &list);
        let html = render(&tera, "index.html", &ctx)?;
        store::modes::create_dirs(&served)?;
        store::write_atomic(&tmp, &index_page, html.as_bytes())?;
        tracing::debug!("rendered the catalog page's index");
    }
    for (name, dir) in names {
        let pages_dir = served.join(&name);
        let first = pages_dir.join(page_file(1));
        if !stale(&first, &dir.join("index.json")) {
            continue;
        }
        render_repository(&tera, &tmp, &dir, &pages_dir, &name)?;
        tracing::debug!("rendered the catalog pages of {name}");
    }
    Ok(())
}

fn page_file(n: usize) -> String {
    format!("{PAGE_PREFIX}{n}.html")
}

/// Whether `page` is missing or not newer than `source` (equal times count as stale: on
/// a filesystem with coarse timestamps both may fall in one tick).
fn stale(page: &Path, source: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(page), modified(source)) {
        (Some(page), Some(source)) => page <= source,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// One row of a repository page.
#[derive(Serialize)]
struct Row<'a> {
    tag: &'a str,
    digest: String,
    short: &'a str,
    kind: &'static str,
    platforms: Vec<String>,
    size: String,
    refers: Vec<String>,
    upstream_digest: Option<&'a str>,
}

fn render_repository(
    tera: &tera::Tera,
    tmp: &Path,
    dir: &Path,
    pages_dir: &Path,
    name: &str,
) -> Result<(), CatalogError> {
    let info = inventory::repo_info(dir, name.to_owned())?;
    let tags: BTreeSet<&str> = info.tags.iter().map(|t| t.tag.as_str()).collect();
    let referrers_dir = pages_dir.join(REFERRERS_DIR);
    let rows: Vec<Row> = info
        .tags
        .iter()
        .map(|t| row(dir, &referrers_dir, &tags, t))
        .collect();
    let total_size: u64 = info.tags.iter().map(|t| t.size).sum();
    let pages = rows.len().div_ceil(PAGE_SIZE).max(1);
    store::modes::create_dirs(pages_dir)?;
    let mut written = Vec::new();
    for (i, chunk) in rows
        .chunks(PAGE_SIZE)
        .chain(
            // A repository without tags still gets its (empty) first page.
            rows.is_empty().then_some(&[][..]),
        )
        .enumerate()
    {
        let page = i + 1;
        let mut ctx = context();
        ctx.insert("name", name);
        ctx.insert("rows", chunk);
        ctx.insert("page", &page);
        ctx.insert("pages", &pages);
        ctx.insert("tag_count", &rows.len());
        ctx.insert("total_size", &human(total_size));
        let html = render(tera, "repository.html", &ctx)?;
        let path = pages_dir.join(page_file(page));
        store::write_atomic(tmp, &path, html.as_bytes())?;
        written.push(path);
    }
    // Fewer pages than before: the old last ones go.
    for old in store::pages(pages_dir)? {
        if !written.contains(&old) {
            fs::remove_file(&old).map_err(StoreError::io("remove", &old))?;
        }
    }
    Ok(())
}

fn row<'a>(dir: &Path, referrers_dir: &Path, tags: &BTreeSet<&str>, t: &'a TagInfo) -> Row<'a> {
    let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let manifest = fs::read(blob(&t.digest))
        .ok()
        .and_then(|bytes| Manifest::parse(&bytes, Some(&t.media_type)).ok());
    let (kind, platforms) = match manifest.as_ref().map(|m| &m.kind) {
        Some(Kind::Index(children)) => (
            "index",
            children
                .iter()
                .filter_map(|c| c.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect(),
        ),
        Some(Kind::Image { config, .. }) => {
            let platform = fs::read(blob(&config.digest))
                .ok()
                .and_then(|b| serde_json::from_slice::<ConfigPlatform>(&b).ok())
                .and_then(|c| Some(format!("{}/{}", c.os?, c.architecture?)));
            let artifact = manifest.as_ref().and_then(|m| m.artifact_type.as_ref());
            (
                if artifact.is_some() {
                    "artifact"
                } else {
                    "image"
                },
                platform.into_iter().collect(),
            )
        }
        None => ("manifest", Vec::new()),
    };
    let hex = t.digest.hex();
    let mut refers: Vec<String> = fs::read(referrers_dir.join(format!("{hex}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<ReferrersIndex>(&b).ok())
        .map(|idx| {
            idx.manifests
                .into_iter()
                .map(|d| describe_artifact(d.artifact_type.as_deref().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    // cosign's tag scheme: sha256-<hex>.sig / .att / .sbom beside the image.
    for (suffix, what) in [
        ("sig", "signature (cosign)"),
        ("att", "attestation (cosign)"),
        ("sbom", "SBOM (cosign)"),
    ] {
        if tags.contains(format!("sha256-{hex}.{suffix}").as_str()) {
            refers.push(what.to_owned());
        }
    }
    refers.sort();
    refers.dedup();
    Row {
        tag: &t.tag,
        digest: t.digest.to_string(),
        short: &hex[..12],
        kind,
        platforms,
        size: human(t.size),
        refers,
        upstream_digest: t.upstream_digest.as_deref(),
    }
}

#[derive(serde::Deserialize)]
struct ConfigPlatform {
    os: Option<String>,
    architecture: Option<String>,
}

#[derive(serde::Deserialize)]
struct ReferrersIndex {
    #[serde(default)]
    manifests: Vec<ReferrerEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerEntry {
    artifact_type: Option<String>,
}

/// A referrer's artifact type in words.
fn describe_artifact(artifact_type: &str) -> String {
    let t = artifact_type.to_ascii_lowercase();
    let what = if t.contains("spdx") || t.contains("cyclonedx") || t.contains("sbom") {
        "SBOM"
    } else if t.contains("sig") || t.contains("cosign") || t.contains("notary") {
        "signature"
    } else if t.contains("in-toto") || t.contains("attestation") || t.contains("provenance") {
        "attestation"
    } else {
        "artifact"
    };
    if artifact_type.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({artifact_type})")
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn context() -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("host", HOST_PLACEHOLDER);
    ctx.insert("prefix", PREFIX_PLACEHOLDER);
    ctx.insert("version", env!("CARGO_PKG_VERSION"));
    ctx
}

fn templates() -> Result<tera::Tera, CatalogError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_templates(TEMPLATES)
        .map_err(|source| CatalogError::Template {
            name: "catalog",
            source,
        })?;
    Ok(tera)
}

fn render(
    tera: &tera::Tera,
    name: &'static str,
    ctx: &tera::Context,
) -> Result<String, CatalogError> {
    tera.render(name, ctx)
        .map_err(|source| CatalogError::Template { name, source })
}

/// The page a catalog URL names, relative to the store's served documents: `/` is the
/// index, `/r/<name>/` and `/r/<name>/page/<n>` a repository's pages (`name` as
/// served; the caller maps it to the stored one).
pub fn page_path(stored_name: Option<&str>, page: usize) -> PathBuf {
    match stored_name {
        None => PathBuf::from(INDEX_PAGE),
        Some(name) => Path::new(name).join(page_file(page)),
    }
}
