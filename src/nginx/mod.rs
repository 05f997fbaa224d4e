//! gen-conf: render nginx configuration that serves a store as a read-only registry.
//!
//! Reads only the store (never the registry, never fetch), so a store made by any version
//! or restored from a bundle renders the same way. Every repository name, tag and digest
//! is validated against the OCI grammar before it reaches the output; anything else in
//! the store is skipped with a warning, never rendered. `host` looks at and installs
//! into the host's own nginx.

pub mod host;
pub mod s3;
mod sites;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::htpasswd::{Access, AccessError, AuthError, Htpasswd};
use crate::mapping::Mappings;
use crate::reference;
use crate::routes::{self, ApiError, KINDS, NAME_RE};
use crate::store::{self, StoreError};

const TEMPLATE_NAMES: [&str; 3] = [
    "registry.conf.tera",
    "maps.conf.tera",
    "locations.conf.tera",
];
const EMBEDDED: [&str; 3] = [
    include_str!("../../templates/registry.conf.tera"),
    include_str!("../../templates/maps.conf.tera"),
    include_str!("../../templates/locations.conf.tera"),
];

static SERVER_ROOT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A(?:/[A-Za-z0-9._/-]*|\$[A-Za-z_][A-Za-z0-9_]*)\z").expect("valid regex")
});
static LISTEN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A(?:[0-9]{1,5}|[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5})\z")
        .expect("valid regex")
});
static SIZE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[0-9]+[kKmMgG]?\z").expect("valid regex"));
static TIME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[0-9]+(?:ms|[smhdwMy])?\z").expect("valid regex"));
static SERVER_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A[A-Za-z0-9*._-]+(?: [A-Za-z0-9*._-]+)*\z").expect("valid regex")
});

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("invalid {option} {value:?}: {rule}")]
    InvalidOption {
        option: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "{0} is not a static-registry store (no .static-registry file); run `static-registry fetch --root {0}` first"
    )]
    NotAStore(String),
    #[error("reading the store")]
    Store(#[from] StoreError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {bin}: {source}")]
    Run {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx -t rejected the configuration with the new {path}; {}: {output}", if *kept { "the previous file is back in place and nginx keeps serving it" } else { "it was removed again" })]
    Rejected {
        path: PathBuf,
        kept: bool,
        output: String,
    },
    #[error("{path} is installed and nginx -t accepts it, but reloading nginx failed: {output}")]
    NotReloaded { path: PathBuf, output: String },
    #[error(transparent)]
    Htpasswd(#[from] AuthError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: tera::Error,
    },
}

/// Which part of the configuration to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Maps (http level) and a complete server block: drop into conf.d/.
    Server,
    /// Location blocks, to include inside an existing server block.
    Locations,
    /// The http-level maps that `Locations` needs.
    Maps,
}

#[derive(Debug, Clone)]
pub struct GenConfOptions {
    pub root: PathBuf,
    /// Where nginx sees the store: an absolute path or an nginx variable (`$name`).
    /// Default: the absolute path of `root`.
    pub server_root: Option<String>,
    /// Serve every repository as `<prefix>/<name>`.
    pub name_prefix: Option<String>,
    pub listen: String,
    pub server_name: String,
    pub part: Part,
    /// Directory with replacement templates (same file names).
    pub templates: Option<PathBuf>,
    /// The host's nginx, whose other servers on our port are looked at.
    pub host: host::HostNginx,
    /// Where the output will be installed (not a competitor of itself).
    pub install: Option<PathBuf>,
    /// Serve HTTPS (and HTTP/2) instead of plain HTTP.
    pub tls: Option<Tls>,
    /// Served names mapped onto stored names and upstream registries, per virtual host.
    pub mappings: Mappings,
    /// Upstream mounts in proxy mode: where nginx caches what it fetched.
    pub proxy_cache: ProxyCache,
    /// Users who may pull (Basic auth).
    pub htpasswd: Option<PathBuf>,
    /// Which repositories each of them may pull (all, without it).
    pub access: Option<PathBuf>,
    /// Serve a bucket `publish` wrote instead of the store.
    pub s3_front: Option<s3::S3Front>,
}

/// The TLS side of the generated servers.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Also listen here for plain HTTP, redirecting to HTTPS.
    pub redirect_from: Option<String>,
}

/// nginx's cache for proxied upstream mounts.
#[derive(Debug, Clone)]
pub struct ProxyCache {
    /// The cache directory (nginx creates it; its workers must be able to write it).
    pub dir: PathBuf,
    /// Its size limit in nginx's notation (`10g`).
    pub max_size: String,
    /// How long a tag, tags list or referrers answer is fresh (nginx time, `1m`).
    pub tag_validity: String,
    /// CA bundle that upstream certificates are verified against.
    pub upstream_ca: PathBuf,
    /// DNS servers nginx asks for the hosts that upstreams redirect blobs to (nginx
    /// resolves those at request time); empty: the host's, from /etc/resolv.conf.
    pub resolvers: Vec<String>,
}

impl Default for ProxyCache {
    fn default() -> Self {
        ProxyCache {
            dir: PathBuf::from("/var/cache/nginx/static-registry"),
            max_size: "10g".to_owned(),
            tag_validity: "1m".to_owned(),
            upstream_ca: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            resolvers: Vec::new(),
        }
    }
}

/// What gen-conf produced.
#[derive(Debug)]
pub struct Rendered {
    pub config: String,
    /// Entries of the store left out, each with the reason.
    pub skipped: Vec<String>,
    /// What would make the rendered server fail, each with what to do.
    pub warnings: Vec<String>,
}

/// The route model flattened into nginx map entries.
#[derive(Debug, Default)]
struct MapModel {
    repos: Vec<String>,
    /// ("name:tag", hex)
    tags: Vec<(String, String)>,
    /// ("name@hex", kind)
    manifests: Vec<(String, &'static str)>,
    skipped: Vec<String>,
}

fn map_model(root: &Path) -> Result<MapModel, NginxError> {
    if !store::inventory::is_store(root) {
        return Err(NginxError::NotAStore(root.display().to_string()));
    }
    let model = routes::scan(root)?;
    let mut out = MapModel {
        skipped: model.skipped,
        ..MapModel::default()
    };
    for (name, repo) in model.repos {
        out.tags.extend(
            repo.tags
                .into_iter()
                .map(|(tag, hex)| (format!("{name}:{tag}"), hex)),
        );
        out.manifests.extend(
            repo.manifests
                .into_iter()
                .map(|(hex, kind)| (format!("{name}@{hex}"), kind)),
        );
        out.repos.push(name);
    }
    Ok(out)
}

/// One map entry: `"key" value;`.
#[derive(Serialize)]
struct MapEntry<'a> {
    key: &'a str,
    value: &'a str,
}

fn map_entries<'a>(pairs: &'a [(String, impl AsRef<str>)]) -> Vec<MapEntry<'a>> {
    pairs
        .iter()
        .map(|(key, value)| MapEntry {
            key,
            value: value.as_ref(),
        })
        .collect()
}

#[derive(Serialize)]
struct KindType {
    kind: &'static str,
    media_type: &'static str,
}

fn check(
    option: &'static str,
    value: &str,
    re: &Regex,
    rule: &'static str,
) -> Result<(), NginxError> {
    if re.is_match(value) {
        Ok(())
    } else {
        Err(NginxError::InvalidOption {
            option,
            value: value.to_owned(),
            rule,
        })
    }
}

/// The server block's own options: where it listens and the names it answers.
fn check_server(opts: &GenConfOptions) -> Result<(), NginxError> {
    check(
        "--listen",
        &opts.listen,
        &LISTEN_RE,
        "a port, or address:port",
    )?;
    check(
        "--server-name",
        &opts.server_name,
        &SERVER_NAME_RE,
        "host names of [A-Za-z0-9*._-] separated by single spaces",
    )
}

/// What every server block's template is given: the server's own options (see
/// [`check_server`]), the name grammar, and the pull API's fixed answers.
fn server_context(opts: &GenConfOptions) -> Result<tera::Context, NginxError> {
    let mut ctx = tera::Context::new();
    ctx.insert("version", env!("CARGO_PKG_VERSION"));
    ctx.insert("listen", &opts.listen);
    ctx.insert("server_name", &opts.server_name);
    let tls = opts.tls.as_ref();
    ctx.insert(
        "tls_cert",
        &tls.map(|t| path_text("--tls-cert", &t.cert)).transpose()?,
    );
    ctx.insert(
        "tls_key",
        &tls.map(|t| path_text("--tls-key", &t.key)).transpose()?,
    );
    ctx.insert("name_re", NAME_RE);
    ctx.insert("errors", &error_answers());
    ctx.insert("no_referrers", routes::NO_REFERRERS);
    ctx.insert("host_placeholder", crate::catalog::HOST_PLACEHOLDER);
    ctx.insert("prefix_placeholder", crate::catalog::PREFIX_PLACEHOLDER);
    Ok(ctx)
}

/// Validate the options, scan the store and render the configuration.
pub fn gen_conf(opts: &GenConfOptions) -> Result<Rendered, NginxError> {
    if let Some(front) = &opts.s3_front {
        return s3::render(opts, front);
    }
    let server_root = match &opts.server_root {
        Some(r) => r.clone(),
        None => std::path::absolute(&opts.root)
            .map_err(|source| NginxError::Io {
                path: opts.root.clone(),
                source,
            })?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned(),
    };
    check(
        "--server-root",
        &server_root,
        &SERVER_ROOT_RE,
        "an absolute path of [A-Za-z0-9._/-] or an nginx variable like $registry_root (pass --server-root when the store's path has other characters)",
    )?;
    check_server(opts)?;
    if let Some(prefix) = &opts.name_prefix {
        reference::validate_repository(prefix).map_err(|_| NginxError::InvalidOption {
            option: "--name-prefix",
            value: prefix.clone(),
            rule: "a repository name: lowercase [a-z0-9] components separated by '/', joined inside by '.', '_', '__' or '-'",
        })?;
    }
    let model = map_model(&opts.root)?;
    let tera = templates(opts.templates.as_deref())?;

    let prefix = opts
        .name_prefix
        .as_ref()
        .map(|p| format!("{p}/"))
        .unwrap_or_default();
    if opts.part != Part::Server && opts.mappings.sites.len() > 1 {
        return Err(NginxError::InvalidOption {
            option: "--mappings",
            value: "vhosts".to_owned(),
            rule: "virtual hosts need server blocks of their own: leave out --locations-only and --maps-only",
        });
    }
    let mut routes = sites::routes(&model.repos, &prefix, &opts.mappings);
    let mut warnings = std::mem::take(&mut routes.warnings);
    let cache = &opts.proxy_cache;
    let upstream_ca = routes
        .upstreams
        .iter()
        .any(|u| u.proxy && u.scheme == "https")
        .then(|| path_text("--upstream-ca", &cache.upstream_ca))
        .transpose()?;
    let longest_key = model
        .tags
        .iter()
        .map(|(k, _)| k.len())
        .chain(model.manifests.iter().map(|(k, _)| k.len()))
        .chain(routes.names.iter().map(|e| e.key.len()))
        .max()
        .unwrap_or(0);
    let entries = model
        .tags
        .len()
        .max(model.manifests.len())
        .max(routes.names.len())
        .max(1);
    let mut ctx = server_context(opts)?;
    ctx.insert("store", &server_root);
    ctx.insert("root", &server_root);
    ctx.insert("part", &opts.part);
    let tls = opts.tls.as_ref();
    let redirect_from = tls.and_then(|t| t.redirect_from.as_deref());
    if let Some(from) = redirect_from {
        check(
            "--tls-redirect-from",
            from,
            &LISTEN_RE,
            "a port, or address:port",
        )?;
    }
    ctx.insert("tls_redirect_from", &redirect_from);
    // The port clients are redirected to, when it is not HTTPS's own.
    let port = host::listen_port(&opts.listen).filter(|p| *p != 443);
    ctx.insert(
        "tls_port",
        &port.map(|p| format!(":{p}")).unwrap_or_default(),
    );
    ctx.insert("renamed", &routes.renamed);
    ctx.insert("names", &routes.names);
    ctx.insert("ns", &routes.ns);
    ctx.insert("catalog", &routes.catalog);
    ctx.insert("mounts", &routes.mounts);
    ctx.insert("upstreams", &routes.upstreams);
    ctx.insert("any_proxy", &routes.any_proxy);
    ctx.insert("sites", &routes.sites);
    ctx.insert("upstream_ca", &upstream_ca);
    let htpasswd = opts
        .htpasswd
        .as_deref()
        .map(|path| {
            let text = path_text("--htpasswd", path)?;
            Htpasswd::load(path)?;
            warnings.extend(htpasswd_warning(path));
            Ok::<_, NginxError>(text)
        })
        .transpose()?;
    ctx.insert("htpasswd", &htpasswd);
    let access = match (&opts.access, &htpasswd) {
        (Some(path), Some(_)) => Some(access_entries(&Access::load(path)?)),
        (Some(path), None) => {
            return Err(NginxError::InvalidOption {
                option: "--access",
                value: path.display().to_string(),
                rule: "per-repository access names users of --htpasswd: give both",
            });
        }
        (None, _) => None,
    };
    ctx.insert("access", &access);
    if routes.any_proxy {
        proxy_context(&mut ctx, cache, &mut warnings)?;
    }
    ctx.insert("name_prefix", &prefix);
    let (lower, mixed) = tag_keys(&model.tags);
    ctx.insert("tags", &map_entries(&lower));
    ctx.insert("mixed_tags", &map_entries(&mixed));
    ctx.insert("manifests", &map_entries(&model.manifests));
    ctx.insert(
        "kinds",
        &KINDS
            .iter()
            .map(|&(kind, media_type)| KindType { kind, media_type })
            .collect::<Vec<_>>(),
    );
    ctx.insert("repo_count", &model.repos.len());
    ctx.insert("tag_count", &model.tags.len());
    ctx.insert("manifest_count", &model.manifests.len());
    ctx.insert("longest_key", &longest_key);
    // Room for several entries (key plus pointer and padding) per bucket: with one or two,
    // nginx finds no table within max_size for 10k keys ("could not build optimal
    // map_hash"); measured with nginx 1.22 and 10k tags, 512 and 2 x entries build cleanly.
    ctx.insert(
        "bucket_size",
        &((longest_key + 32) * 4).next_power_of_two().max(512),
    );
    ctx.insert("max_size", &(entries * 2).next_power_of_two().max(2048));

    let render = |name: &str, ctx: &tera::Context| {
        tera.render(name, ctx)
            .map_err(|source| NginxError::Template {
                name: name.to_owned(),
                source,
            })
    };
    let maps = render("maps.conf.tera", &ctx)?;
    let mut locations = Vec::new();
    for site in &routes.sites {
        ctx.insert("site", &site.id);
        ctx.insert("root_upstream", &site.root_upstream);
        locations.push(render("locations.conf.tera", &ctx)?);
    }
    ctx.insert("maps", &maps);
    ctx.insert("locations", &locations);
    let config = render("registry.conf.tera", &ctx)?;
    let skipped = model.skipped;
    warnings.extend(if opts.server_root.is_none() {
        access_warnings(&opts.root)
    } else {
        Vec::new()
    });
    if routes.upstreams.iter().any(|u| !u.authorization.is_empty()) {
        warnings.push(
            "the configuration holds upstream credentials (from credentials-file): keep it readable by root only (chmod 600)".to_owned(),
        );
    }
    if opts.part == Part::Server && opts.server_name == "_" {
        warnings.extend(default_server_warnings(opts));
    }
    Ok(Rendered {
        config,
        skipped,
        warnings,
    })
}

/// Every error answer, by name, as the templates render it (`return <status> '<body>'`).
fn error_answers() -> BTreeMap<&'static str, ErrorAnswer> {
    ApiError::ALL
        .iter()
        .map(|e| {
            let answer = ErrorAnswer {
                status: e.status(),
                body: e.body(),
            };
            (e.key(), answer)
        })
        .collect()
}

#[derive(Serialize)]
struct ErrorAnswer {
    status: u16,
    body: String,
}

/// (key, value) pairs of one nginx map.
type MapPairs = Vec<(String, String)>;

/// An absolute path as nginx may read it unquoted.
fn path_text(option: &'static str, p: &Path) -> Result<String, NginxError> {
    let text = p.to_string_lossy().into_owned();
    check(
        option,
        &text,
        &SERVER_ROOT_RE,
        "an absolute path of [A-Za-z0-9._/-]",
    )?;
    Ok(text)
}

/// The "name:tag" keys split: all-lowercase ones for a hash map, and the others as exact
/// regexes. nginx compares map keys ignoring case (and refuses keys that differ only in
/// case); tags are case-sensitive.
fn tag_keys(tags: &[(String, String)]) -> (MapPairs, MapPairs) {
    let (mixed, lower): (Vec<_>, Vec<_>) = tags
        .iter()
        .cloned()
        .partition(|(key, _)| key.bytes().any(|b| b.is_ascii_uppercase()));
    let mixed = mixed
        .into_iter()
        // Names and tags are validated: '.' is their only regex metacharacter.
        .map(|(key, hex)| (format!("^{}$", key.replace('.', "\\.")), hex))
        .collect();
    (lower, mixed)
}

/// What proxied upstream mounts add: the cache and the resolver for storage redirects.
fn proxy_context(
    ctx: &mut tera::Context,
    cache: &ProxyCache,
    warnings: &mut Vec<String>,
) -> Result<(), NginxError> {
    check(
        "--proxy-cache-size",
        &cache.max_size,
        &SIZE_RE,
        "a size such as 500m or 10g",
    )?;
    check(
        "--proxy-tag-validity",
        &cache.tag_validity,
        &TIME_RE,
        "an nginx time such as 30s, 1m or 1h",
    )?;
    let resolvers = if cache.resolvers.is_empty() {
        system_resolvers()
    } else {
        cache.resolvers.clone()
    };
    let resolver = resolvers
        .iter()
        .map(|r| {
            r.parse::<std::net::IpAddr>()
                .map(|ip| match ip {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                })
                .map_err(|_| NginxError::InvalidOption {
                    option: "--resolver",
                    value: r.clone(),
                    rule: "an IPv4 or IPv6 address",
                })
        })
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    if resolver.is_empty() {
        warnings.push("no DNS server found in /etc/resolv.conf: blobs that a proxied upstream redirects to a host name will fail (502); give --resolver ADDR".to_owned());
    }
    ctx.insert("resolver", &resolver);
    ctx.insert("cache_dir", &path_text("--proxy-cache", &cache.dir)?);
    ctx.insert("cache_size", &cache.max_size);
    ctx.insert("tag_validity", &cache.tag_validity);
    Ok(())
}

/// The name servers of /etc/resolv.conf (where nginx, which reads no such file, should
/// ask at request time).
fn system_resolvers() -> Vec<String> {
    fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // A scoped IPv6 address (fe80::1%eth0) is not something nginx takes.
        .filter(|addr| !addr.contains('%'))
        .map(str::to_owned)
        .collect()
}

/// Other servers of the host's nginx on our port take every request whose Host matches no
/// server_name: with `server_name _` (and no `default_server`) ours would get none. This is
/// what a distribution's default site does to a config dropped into conf.d/.
fn default_server_warnings(opts: &GenConfOptions) -> Vec<String> {
    let Some(port) = host::listen_port(&opts.listen) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for c in host::competitors(&opts.host.conf_dir(), port, opts.install.as_deref()) {
        match files.iter_mut().find(|(f, _)| *f == c.file) {
            Some((_, listens)) => listens.push(c.listen),
            None => files.push((c.file, vec![c.listen])),
        }
    }
    files
        .into_iter()
        .map(|(file, listens)| {
            format!(
                "{} also listens on port {port} (listen {}): nginx sends it every request whose Host is not one of this server's names, and this server has none (server_name _), so clients would reach that site instead of the registry: pass --server-name with the host name clients pull from (e.g. --server-name reg.example), or disable that site",
                file.display(),
                listens.join("; listen ")
            )
        })
        .collect()
}

/// The access file as nginx map entries: "~^<user>:<pattern>$" (user names are
/// letters, digits and `._@-`, patterns already regexes of names).
fn access_entries(access: &Access) -> Vec<String> {
    access
        .users
        .iter()
        .flat_map(|(user, patterns)| {
            let user = user.replace('.', "\\.");
            patterns.iter().map(move |p| {
                let body = p.trim_start_matches('^').trim_end_matches('$');
                format!("~^{user}:{body}$")
            })
        })
        .collect()
}

/// nginx's workers read the htpasswd file at each request: one only its owner may read
/// fails every pull (500).
fn htpasswd_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 == 0).then(|| {
        format!(
            "{} is readable by its owner only: nginx's workers (www-data, nginx or nobody) read it at each request and would fail every pull; make it readable by their group (chgrp www-data {0}; chmod 640 {0})",
            path.display()
        )
    })
}

/// What keeps a web server running as its own user from reading the store where nginx
/// will look for it: a directory on the way that others cannot traverse, or a store
/// whose files others cannot read (the served catalog stands in for all of them).
fn access_warnings(root: &Path) -> Vec<String> {
    let mut warnings: Vec<String> = store::modes::closed_path(root)
        .iter()
        .map(|dir| {
            format!(
                "nginx's workers (www-data, nginx or nobody) cannot traverse {} (others lack x), so every manifest and blob request will fail: `chmod o+x {}`, or keep the store where they can reach it (e.g. /srv/images)",
                dir.display(),
                dir.display()
            )
        })
        .collect();
    let catalog = root.join(store::SERVED_DIR).join(store::CATALOG_FILE);
    let reader = store::modes::WebReader::of(root);
    if let (Ok(reader), Ok(meta)) = (reader, fs::metadata(&catalog))
        && !reader.can_read(&meta)
    {
        warnings.push(format!(
            "{} is not readable by others, so nginx's workers cannot read the store's files: run `static-registry verify --root {} --repair`",
            catalog.display(),
            root.display()
        ));
    }
    warnings
}

fn templates(dir: Option<&Path>) -> Result<tera::Tera, NginxError> {
    let mut tera = tera::Tera::default();
    // The output is nginx syntax, not HTML; values are validated before rendering.
    tera.autoescape_on(vec![]);
    let mut sources = Vec::new();
    for (name, embedded) in TEMPLATE_NAMES.iter().zip(EMBEDDED) {
        let body = match dir {
            Some(dir) => {
                let path = dir.join(name);
                fs::read_to_string(&path).map_err(|source| NginxError::Io { path, source })?
            }
            None => embedded.to_owned(),
        };
        sources.push((*name, body));
    }
    tera.add_raw_templates(sources)
        .map_err(|source| NginxError::Template {
            name: "templates".to_owned(),
            source,
        })?;
    Ok(tera)
}
