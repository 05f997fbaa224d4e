//! Name mappings for gen-conf: served names that answer from another stored name or from a
//! live upstream registry, per virtual host.
//!
//! Two file shapes: the collage registry's `config.json` (`mappings`, `vhosts`; values are
//! targets) read unchanged, and our YAML config's `serve:` section (the same shapes; a value
//! may also be `{target, mode, credentials-file}`). Every served name, target, host and
//! credential is validated here, before anything reaches an nginx configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::reference;

/// How a live upstream mount is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 307 to the upstream URL; the client talks to the upstream (and authenticates there).
    Redirect,
    /// nginx fetches from the upstream and caches what it got.
    Proxy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "redirect" => Ok(Mode::Redirect),
            "proxy" => Ok(Mode::Proxy),
            _ => Err(format!("{s:?}: expected redirect or proxy")),
        }
    }
}

/// A registry that a mount answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    /// `host` or `host:port`, lowercase; Docker Hub's name is its API host.
    pub host: String,
    /// Repository path on the upstream that the served name stands for (may be empty).
    pub path: String,
    pub mode: Mode,
    /// `Basic <base64>` sent to the upstream instead of the client's Authorization.
    pub authorization: Option<String>,
}

impl Upstream {
    /// `https://host[:port]`
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }

    /// The host name without port (TLS SNI).
    pub fn server_name(&self) -> &str {
        match self.host.find(']') {
            Some(end) => &self.host[..=end],
            None => self.host.split(':').next().unwrap_or_default(),
        }
    }

    /// `host:port` with the scheme's default port filled in (an nginx `server`).
    pub fn address(&self) -> String {
        if self.host.ends_with(']') || !self.host.contains(':') {
            format!("{}:{}", self.host, if self.tls { 443 } else { 80 })
        } else {
            self.host.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A repository or namespace of the store.
    Stored(String),
    Upstream(Upstream),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The served name or namespace; `None` is `/`, every name.
    pub served: Option<String>,
    pub target: Target,
}

impl Mapping {
    /// The part of `name` below this mapping's served path: `Some("")` for the name
    /// itself, `Some("x/y")` for `<served>/x/y`, `None` when it is not under it.
    pub fn rest<'a>(&self, name: &'a str) -> Option<&'a str> {
        match &self.served {
            None => Some(name),
            Some(s) => below(name, s),
        }
    }

    /// How specific the mapping is: the longest served path that covers a name wins.
    pub fn depth(&self) -> usize {
        self.served.as_ref().map_or(0, |s| s.len() + 1)
    }
}

/// The part of repository `name` below `base`, in whole components: `Some("")` for
/// `base` itself, `Some("x/y")` for `<base>/x/y`, `None` otherwise.
pub fn below<'a>(name: &'a str, base: &str) -> Option<&'a str> {
    if name == base {
        Some("")
    } else {
        name.strip_prefix(base)?.strip_prefix('/')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The virtual host's name; `None` for the default server.
    pub host: Option<String>,
    pub mappings: Vec<Mapping>,
}

/// Every site's mappings; the default site comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mappings {
    pub sites: Vec<Site>,
}

impl Default for Mappings {
    fn default() -> Self {
        Mappings {
            sites: vec![Site {
                host: None,
                mappings: Vec::new(),
            }],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {} problem{}:{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Invalid { file: String, problems: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollageFile {
    #[serde(default)]
    mappings: BTreeMap<String, String>,
    #[serde(default)]
    vhosts: BTreeMap<String, CollageVhost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollageVhost {
    #[serde(default)]
    mappings: BTreeMap<String, String>,
}

/// Our config file: only `serve:` is read here; the rest belongs to fetch and sync.
#[derive(Deserialize)]
struct OwnFile {
    serve: ServeSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeSection {
    upstream_mode: Option<Mode>,
    #[serde(default)]
    mappings: BTreeMap<String, Spec>,
    #[serde(default)]
    vhosts: BTreeMap<String, OwnVhost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnVhost {
    #[serde(default)]
    mappings: BTreeMap<String, Spec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Spec {
    Target(String),
    Full(FullSpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FullSpec {
    target: String,
    mode: Option<Mode>,
    credentials_file: Option<PathBuf>,
}

impl From<String> for Spec {
    fn from(target: String) -> Spec {
        Spec::Target(target)
    }
}

/// Reads a mappings file: collage's config.json, or our YAML config with a `serve:`
/// section. `mode` is the upstream mode of mappings that name none.
pub fn load(path: &Path, mode: Option<Mode>) -> Result<Mappings, MappingError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
        file: file.clone(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base, mode)
}

/// Parses mappings text; `file` names it in messages, `base` resolves relative
/// credential files.
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    mode: Option<Mode>,
) -> Result<Mappings, MappingError> {
    let syntax = |e: serde_yaml_ng::Error| MappingError::Syntax {
        file: file.to_owned(),
        message: e.to_string(),
    };
    // YAML reads JSON too; a top-level `serve:` marks our format.
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
    let ours = doc
        .as_mapping()
        .is_some_and(|m| m.contains_key(serde_yaml_ng::Value::from("serve")));
    let (default_mode, sites) = if ours {
        let own: OwnFile = serde_yaml_ng::from_str(text).map_err(syntax)?;
        let s = own.serve;
        let mut sites = vec![(None, s.mappings)];
        sites.extend(s.vhosts.into_iter().map(|(h, v)| (Some(h), v.mappings)));
        (s.upstream_mode, sites)
    } else {
        let c: CollageFile = serde_yaml_ng::from_str(text).map_err(|e| MappingError::Syntax {
            file: file.to_owned(),
            message: format!(
                "{e} (expected collage's config.json with `mappings` and `vhosts`, or our YAML config with a `serve:` section)"
            ),
        })?;
        let convert = |m: BTreeMap<String, String>| {
            m.into_iter()
                .map(|(k, v)| (k, Spec::from(v)))
                .collect::<BTreeMap<_, _>>()
        };
        let mut sites = vec![(None, convert(c.mappings))];
        sites.extend(
            c.vhosts
                .into_iter()
                .map(|(h, v)| (Some(h), convert(v.mappings))),
        );
        (None, sites)
    };
    let mode = mode.or(default_mode).unwrap_or(Mode::Redirect);
    let mut problems = Vec::new();
    let mut out = Mappings { sites: Vec::new() };
    for (host, specs) in sites {
        let at = match &host {
            None => "mappings".to_owned(),
            Some(h) => format!("vhosts.{h:?}.mappings"),
        };
        let host = match host.map(|h| vhost_name(&h)).transpose() {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("vhosts.{e}"));
                continue;
            }
        };
        let mut mappings = Vec::new();
        for (served, spec) in specs {
            match mapping(&served, spec, mode, base) {
                Ok(m) => mappings.push(m),
                Err(e) => problems.push(format!("{at}.{served:?}: {e}")),
            }
        }
        out.sites.push(Site { host, mappings });
    }
    let mut seen = std::collections::BTreeSet::new();
    for site in &out.sites[1..] {
        if let Some(h) = &site.host
            && !seen.insert(h.clone())
        {
            problems.push(format!(
                "vhosts: {h:?} is given twice (names are compared in lowercase)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(MappingError::Invalid {
            file: file.to_owned(),
            problems,
        })
    }
}

/// A virtual host's name as nginx's `server_name` takes it: one DNS name, lowercase.
fn vhost_name(host: &str) -> Result<String, String> {
    let lower = host.to_ascii_lowercase();
    if lower.contains(':') || reference::validate_host(&lower).is_err() {
        return Err(format!(
            "{host:?}: not a host name (letters, digits, '-' and '.', without port or scheme)"
        ));
    }
    Ok(lower)
}

fn mapping(served: &str, spec: Spec, default: Mode, base: &Path) -> Result<Mapping, String> {
    let served = if served == "/" {
        None
    } else {
        let name = served.trim_matches('/');
        reference::validate_repository(name).map_err(|e| {
            format!("the served path must be `/` or a repository name or namespace: {e}")
        })?;
        Some(name.to_owned())
    };
    let (target, mode, credentials) = match spec {
        Spec::Target(t) => (t, None, None),
        Spec::Full(f) => (f.target, f.mode, f.credentials_file),
    };
    let mut target = parse_target(&target, mode.unwrap_or(default))?;
    match (&mut target, mode, credentials) {
        (Target::Stored(_), Some(_), _) => {
            return Err(
                "`mode` applies to upstream registries only; this target is a name in the store"
                    .to_owned(),
            );
        }
        (Target::Stored(_), _, Some(_)) => {
            return Err("`credentials-file` applies to upstream registries only".to_owned());
        }
        (Target::Upstream(u), _, Some(file)) => {
            if u.mode != Mode::Proxy {
                return Err(
                    "`credentials-file` needs `mode: proxy` (with redirects, clients log in to the upstream themselves)"
                        .to_owned(),
                );
            }
            u.authorization = Some(basic_credentials(&base.join(file))?);
        }
        _ => {}
    }
    Ok(Mapping { served, target })
}

/// A target with a registry host (a `.` or `:` in its first component, `localhost`, or an
/// `http://`/`https://` scheme) is a live upstream; anything else is a stored name.
pub fn parse_target(target: &str, mode: Mode) -> Result<Target, String> {
    let (tls, rest, explicit) = if let Some(r) = target.strip_prefix("https://") {
        (true, r, true)
    } else if let Some(r) = target.strip_prefix("http://") {
        (false, r, true)
    } else {
        (true, target, false)
    };
    let rest = rest.trim_end_matches('/');
    let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
    let is_host = explicit || first.contains(['.', ':']) || first == "localhost";
    if !is_host {
        reference::validate_repository(rest).map_err(|e| {
            format!("{target:?} is neither a registry host (with a '.' or ':', or localhost) nor a stored name: {e}")
        })?;
        return Ok(Target::Stored(rest.to_owned()));
    }
    reference::validate_host(first)
        .map_err(|_| format!("{target:?}: {first:?} is not a registry host[:port]"))?;
    if !path.is_empty() {
        reference::validate_repository(path).map_err(|e| {
            format!(
                "{target:?}: the path after the host must be a repository name or namespace: {e}"
            )
        })?;
    }
    let host = match first.to_ascii_lowercase().as_str() {
        // Docker Hub's API answers at registry-1.docker.io, as clients resolve docker.io.
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_owned(),
        h => h.to_owned(),
    };
    Ok(Target::Upstream(Upstream {
        tls,
        host,
        path: path.to_owned(),
        mode,
        authorization: None,
    }))
}

/// `user:password` on the first line of `path`, as an Authorization header value.
fn basic_credentials(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("credentials-file {}: {e}", path.display()))?;
    let line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if !line.contains(':') || line.starts_with(':') {
        return Err(format!(
            "credentials-file {}: expected `user:password` on its first line",
            path.display()
        ));
    }
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(line)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Mappings {
        parse(text, "m.json", Path::new("."), None).unwrap()
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "m.json", Path::new("."), None) {
            Err(MappingError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn collage_example_reads_unchanged() {
        let m = parse_ok(
            r#"{
  "vhosts" : {
    "docker-io-mirror.local.lan": { "mappings" : { "/" : "mirror.local.lan/docker.io" } }
  },
  "mappings" : {
    "cool/stuff":  "index.docker.io/flavio",
    "etcd":        "quay.io/coreos/etcd",
    "foobar":      "http://insecure-registry.local.lan/foo",
    "lab":         "team/lab"
  }
}"#,
        );
        assert_eq!(m.sites.len(), 2);
        let default = &m.sites[0];
        assert_eq!(default.host, None);
        let by: BTreeMap<_, _> = default
            .mappings
            .iter()
            .map(|m| (m.served.clone().unwrap(), m.target.clone()))
            .collect();
        let Target::Upstream(hub) = &by["cool/stuff"] else {
            panic!()
        };
        assert_eq!(
            (hub.origin(), hub.path.as_str()),
            ("https://registry-1.docker.io".to_owned(), "flavio")
        );
        let Target::Upstream(plain) = &by["foobar"] else {
            panic!()
        };
        assert_eq!(plain.origin(), "http://insecure-registry.local.lan");
        assert_eq!(plain.address(), "insecure-registry.local.lan:80");
        assert_eq!(by["lab"], Target::Stored("team/lab".into()));
        let vhost = &m.sites[1];
        assert_eq!(vhost.host.as_deref(), Some("docker-io-mirror.local.lan"));
        assert_eq!(vhost.mappings[0].served, None);
    }

    #[test]
    fn rest_follows_whole_components() {
        let m = Mapping {
            served: Some("cool/stuff".into()),
            target: Target::Stored("x".into()),
        };
        assert_eq!(m.rest("cool/stuff"), Some(""));
        assert_eq!(m.rest("cool/stuff/app"), Some("app"));
        assert_eq!(m.rest("cool/stuffing"), None);
    }

    #[test]
    fn hostile_mapping_files_are_refused_with_each_problem() {
        let p = problems(
            r#"{"mappings": {
                "a; include /etc/passwd": "lab",
                "b": "lab/../../etc",
                "c": "/etc/passwd",
                "d": "evil.example/x\" ; return 200",
                "e": "http://evil.example:99999/x",
                "../f": "lab"
            }, "vhosts": {"x; }": {"mappings": {}}}}"#,
        );
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(p.iter().any(|p| p.contains("\"x; }\"")), "{p:#?}");
    }

    #[test]
    fn our_serve_section_takes_modes_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("creds"), "bot:s3cret\n").unwrap();
        let m = parse(
            "images: []\nserve:\n  upstream-mode: proxy\n  mappings:\n    etcd:\n      target: quay.io/coreos/etcd\n      credentials-file: creds\n    hub: {target: docker.io/library, mode: redirect}\n",
            "c.yaml",
            dir.path(),
            None,
        )
        .unwrap();
        let ups: Vec<_> = m.sites[0]
            .mappings
            .iter()
            .map(|m| match &m.target {
                Target::Upstream(u) => u.clone(),
                Target::Stored(_) => panic!(),
            })
            .collect();
        assert_eq!(ups[0].mode, Mode::Proxy);
        assert_eq!(
            ups[0].authorization.as_deref(),
            Some("Basic Ym90OnMzY3JldA==")
        );
        assert_eq!(ups[1].mode, Mode::Redirect);
        let p = match parse(
            "serve:\n  mappings:\n    x: {target: lab, mode: proxy}\n    y: {target: q.io/a, credentials-file: creds}\n",
            "c.yaml",
            dir.path(),
            None,
        ) {
            Err(MappingError::Invalid { problems, .. }) => problems,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.len(), 2, "{p:#?}");
    }
}
