//! Mirror configuration: which repositories, tags, digests and platforms to copy, and how to
//! reach each registry.
//!
//! Two YAML formats are read:
//! - our own (documented field by field in `examples/mirror.yaml`): `prefix`, `registries`
//!   keyed by host, and a list of `images`, each with its own tag selection;
//! - skopeo sync's, accepted unchanged: registry hosts at the top level, each with `images`,
//!   `images-by-tag-regex`, `images-by-semver`, `credentials`, `tls-verify` and `cert-dir`.
//!
//! Everything is checked here, before any network traffic, and every problem is reported at
//! once (one line each, with the field path and, for structural errors, the line and column).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_yaml_ng::{Mapping, Value};

use crate::copy::Overwrite;
use crate::plan::Target;
use crate::reference::{Digest, Reference, ReferenceError, validate_repository, validate_tag};
use crate::registry::ClientOptions;
use crate::schedule::Schedule;
use crate::select::{self, PlatformSpec, SelectError, TagSelector};
use crate::signature::{Policy, Require, TrustedKey};

/// How to talk to one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// false: plain http, or https without certificate verification.
    pub tls_verify: bool,
    /// Directory of CA certificates and client keys, as containers' certs.d uses.
    pub cert_dir: Option<PathBuf>,
    /// (username, password).
    pub credentials: Option<(String, String)>,
    /// The signature policy for images from it (`verify:`), unless an image has its own.
    pub verify: Option<Arc<Policy>>,
}

impl Default for RegistrySettings {
    /// Verified TLS, no extra certificates, anonymous.
    fn default() -> Self {
        RegistrySettings {
            tls_verify: true,
            cert_dir: None,
            credentials: None,
            verify: None,
        }
    }
}

impl RegistrySettings {
    /// `base` (the command line's client options) with these TLS settings and credentials.
    pub fn apply(&self, base: &ClientOptions) -> ClientOptions {
        ClientOptions {
            tls_verify: self.tls_verify && base.tls_verify,
            cert_dir: self.cert_dir.clone().or_else(|| base.cert_dir.clone()),
            creds: self.credentials.clone().or_else(|| base.creds.clone()),
            ..base.clone()
        }
    }
}

/// Hand-written so that logging a config never prints a password.
impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("tls_verify", &self.tls_verify)
            .field("cert_dir", &self.cert_dir)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted>")),
            )
            .field("verify", &self.verify)
            .finish()
    }
}

/// One repository to mirror.
///
/// Several specs may share a `target` only when they also share `source`, `platforms` and
/// `referrers` (skopeo lists one repository under `images` and `images-by-tag-regex`, say);
/// the target then receives the union of their selections.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// The repository; `tag` and `digest` are always `None`.
    pub source: Reference,
    /// Repository name in the store, `prefix` applied.
    pub target: String,
    pub tags: TagSelector,
    /// Manifests fetched by digest, untagged.
    pub digests: Vec<Digest>,
    /// Empty: every platform.
    pub platforms: Vec<PlatformSpec>,
    /// Also mirror signatures, SBOMs and attestations that refer to the selected manifests.
    pub referrers: bool,
    /// Only images signed as this says (its own `verify:`, else its registry's).
    pub verify: Option<Arc<Policy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Own,
    SkopeoSync,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// Keyed like `Reference::registry` ("docker.io", "127.0.0.1:5000"). Holds an entry (the
    /// default settings if the file gives none) for every registry an image comes from.
    pub registries: BTreeMap<String, RegistrySettings>,
    pub images: Vec<ImageSpec>,
    pub format: Format,
    /// Where `sync` sends the images (`to:`); empty means the store.
    pub to: Vec<SyncTarget>,
    /// What `sync` does after a round that changed the store (`on-change:`).
    pub on_change: Option<OnChange>,
    /// Stored names are `<prefix>/<name>` (`prefix:`); `images-from` lists need it.
    pub prefix: Option<String>,
    /// When a source runs unless it says otherwise (top-level `interval:` or `cron:`).
    pub schedule: Option<Schedule>,
    /// What `registries.<host>` says about that registry as a `sync` source.
    pub sources: BTreeMap<String, SourceSettings>,
    /// The file has a `serve:` section (gen-conf's mappings).
    pub serve: bool,
}

/// What `sync` does after a round that stored something new.
#[derive(Debug, Clone, PartialEq)]
pub enum OnChange {
    /// A program and its arguments (no shell).
    Command(Vec<String>),
    /// `gen-conf --root <the store> --install <conf> <args>`: render, `nginx -t`, reload,
    /// the old file kept when nginx refuses the new one.
    ReloadNginx { conf: PathBuf, args: Vec<String> },
}

/// A registry's settings as a `sync` source: every image from it is one source, run on
/// its own schedule.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceSettings {
    /// Its name in the control API, logs and metrics (default: the registry host).
    pub name: Option<String>,
    pub schedule: Option<Schedule>,
    /// A command printing references, one per line, run at each round (`images-from:`).
    pub images_from: Vec<String>,
    /// Where its images go instead of the top-level `to:`.
    pub to: Option<Vec<SyncTarget>>,
}

/// One `sync` source: the images of one registry, their targets and schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    /// The registry host, a key of `MirrorConfig::registries`.
    pub registry: String,
    pub images: Vec<ImageSpec>,
    pub images_from: Vec<String>,
    /// `None`: the service's default (`--interval`).
    pub schedule: Option<Schedule>,
    /// Never empty: `[Store]` when nothing was said.
    pub to: Vec<SyncTarget>,
    /// The registry's signature policy, for the images `images_from` lists.
    pub verify: Option<Arc<Policy>>,
}

impl MirrorConfig {
    /// The fields only `sync` acts on that this file uses (fetch refuses them rather than
    /// leave them silently undone); schedules are harmless and not among them.
    pub fn sync_only(&self) -> Vec<&'static str> {
        let registry = |to: &[SyncTarget]| to.iter().any(|t| *t != SyncTarget::Store);
        let mut used = Vec::new();
        if registry(&self.to)
            || self
                .sources
                .values()
                .any(|s| s.to.as_deref().is_some_and(registry))
        {
            used.push("`to:` registries");
        }
        if self.on_change.is_some() {
            used.push("`on-change:`");
        }
        if self.sources.values().any(|s| !s.images_from.is_empty()) {
            used.push("`images-from:`");
        }
        used
    }

    /// The sources: each registry that images come from, in host order.
    pub fn sources(&self) -> Vec<Source> {
        let mut hosts: Vec<&String> = self.images.iter().map(|i| &i.source.registry).collect();
        hosts.extend(
            self.sources
                .iter()
                .filter(|(_, s)| !s.images_from.is_empty())
                .map(|(h, _)| h),
        );
        hosts.sort();
        hosts.dedup();
        hosts
            .into_iter()
            .map(|host| {
                let settings = self.sources.get(host).cloned().unwrap_or_default();
                let to = settings.to.unwrap_or_else(|| self.to.clone());
                Source {
                    name: settings.name.unwrap_or_else(|| host.clone()),
                    registry: host.clone(),
                    images: self
                        .images
                        .iter()
                        .filter(|i| i.source.registry == *host)
                        .cloned()
                        .collect(),
                    images_from: settings.images_from,
                    schedule: settings.schedule.or_else(|| self.schedule.clone()),
                    verify: self.registries.get(host).and_then(|r| r.verify.clone()),
                    to: if to.is_empty() {
                        vec![SyncTarget::Store]
                    } else {
                        to
                    },
                }
            })
            .collect()
    }
}

/// One place `sync` sends every image to.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncTarget {
    /// The store under `--root`.
    Store,
    /// A registry, each image as `<prefix>/<stored name>`, as `push --to` sends them.
    Registry {
        target: Target,
        settings: RegistrySettings,
        overwrite: Overwrite,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {}", ProblemList(.problems))]
    Invalid { file: String, problems: Vec<String> },
}

struct ProblemList<'a>(&'a [String]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}:", if n == 1 { "" } else { "s" })?;
        for p in self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Reads and validates a configuration file; `credentials-env` reads the process environment.
pub fn load(path: &Path) -> Result<MirrorConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let mut config = parse(&text, &file)?;
    // The nginx that sync reloads serves this file's mappings too.
    if config.serve
        && let Some(OnChange::ReloadNginx { args, .. }) = &mut config.on_change
        && !args.iter().any(|a| a == "--mappings")
    {
        let path = std::path::absolute(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        args.extend(["--mappings".into(), path.to_string_lossy().into_owned()]);
    }
    Ok(config)
}

/// Validates configuration text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<MirrorConfig, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// Looks up environment variables; a parameter so tests need not mutate the process's.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn parse_with_env(text: &str, origin: &str, env: Env) -> Result<MirrorConfig, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: origin.to_owned(),
        problems,
    };
    // Syntax errors and repeated keys, located; later passes can only keep one of the values.
    serde_yaml_ng::from_str::<NoDuplicateKeys>(text).map_err(|e| invalid(vec![located(&e)]))?;
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| invalid(vec![located(&e)]))?;
    let doc = match doc {
        Value::Null => Value::Mapping(Mapping::new()),
        Value::Mapping(_) => doc,
        _ => {
            return Err(invalid(vec![
                "the top level must be a mapping: `images:` (with optional `prefix:` and \
                 `registries:`), or a skopeo sync file keyed by registry host"
                    .to_owned(),
            ]));
        }
    };

    let mut problems = Vec::new();
    // `None`: the structure is too broken to check anything further.
    let config = match detect(&doc) {
        Format::Own => {
            own::read(text, &doc, &mut problems).map(|parts| own::build(parts, env, &mut problems))
        }
        Format::SkopeoSync => skopeo::read(text, &doc, &mut problems)
            .map(|parts| skopeo::build(parts, env, &mut problems)),
    };
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(invalid(problems)),
    }
}

const OWN_KEYS: &[&str] = &[
    "prefix",
    "registries",
    "images",
    "to",
    "on-change",
    "interval",
    "cron",
    "serve",
];
const SKOPEO_KEYS: &[&str] = &[
    "images",
    "images-by-tag-regex",
    "images-by-semver",
    "credentials",
    "tls-verify",
    "cert-dir",
];

/// Skopeo sync when no top-level key is ours and some top-level value is a mapping with a
/// skopeo registry key; anything else is read as our format, whose errors then explain it.
fn detect(doc: &Value) -> Format {
    let Some(top) = doc.as_mapping() else {
        return Format::Own;
    };
    let key_in = |k: &Value, set: &[&str]| k.as_str().is_some_and(|k| set.contains(&k));
    let ours = top.keys().any(|k| key_in(k, OWN_KEYS));
    let skopeo = top.values().any(|v| {
        v.as_mapping()
            .is_some_and(|m| m.keys().any(|k| key_in(k, SKOPEO_KEYS)))
    });
    if !ours && skopeo {
        Format::SkopeoSync
    } else {
        Format::Own
    }
}

/// Reads the whole file into `T`; only this run knows line numbers. When it fails, `salvage`
/// reads each node on its own so every broken node is reported rather than the first; the
/// located whole-file error (the first in the file) replaces its unlocated twin and leads.
fn read_or_salvage<T: DeserializeOwned, P>(
    text: &str,
    problems: &mut Vec<String>,
    whole: impl FnOnce(T) -> P,
    salvage: impl FnOnce(&mut Vec<String>) -> Option<P>,
) -> Option<P> {
    let err = match serde_yaml_ng::from_str::<T>(text) {
        Ok(t) => return Some(whole(t)),
        Err(e) => e,
    };
    let mut found = Vec::new();
    let parts = salvage(&mut found);
    let bare = without_location(&err);
    found.retain(|p| *p != bare);
    problems.push(located(&err));
    problems.extend(found);
    parts
}

/// Reads one node as `T` by wrapping it in a document shaped like the original file, so
/// serde's messages carry the same field path as a whole-file read would. Numbers pass
/// through `Value` (3.20 becomes 3.2), harmless here: salvage only runs on a file already
/// rejected.
fn read_node<T: DeserializeOwned>(wrapped: Value) -> Result<T, String> {
    let text = serde_yaml_ng::to_string(&wrapped).map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str(&text).map_err(|e| without_location(&e))
}

/// The message with its location; serde_yaml_ng leaves out "line 1 column 1".
fn located(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(l) => {
            let at = format!(" at line {} column {}", l.line(), l.column());
            if text.contains(&at) { text } else { text + &at }
        }
        None => text,
    }
}

/// The message without " at line L column C", which would point into `read_node`'s text.
fn without_location(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(l) => text
            .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
            .map_or(text.clone(), str::to_owned),
        None => text,
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Mapping::new();
    m.insert(Value::String(key.to_owned()), value);
    Value::Mapping(m)
}

/// A mapping read in document order with keys as written (`Value` would turn the key
/// `3.20` into the number 3.2).
struct Ordered<V>(Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Visit<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

/// Walks a document only to reject a key given twice in one mapping, with its line: `Value`
/// reports it without one, and `Ordered` would keep both entries.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_none<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self, D::Error> {
        NoDuplicateKeys::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "key `{key}` appears twice in one mapping; keep one"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
    // Tagged nodes (`!tag value`): check the value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self, A::Error> {
        let (_, variant) = data.variant::<de::IgnoredAny>()?;
        variant.newtype_variant::<NoDuplicateKeys>()
    }
}

/// `verify:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    keys: Vec<String>,
    require: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: String,
    password: String,
}

/// A registry target sent over the control API, read as a `to:` entry of the file is,
/// except that `credentials-env` is refused: it would let a caller send the service's
/// environment to a registry of its choosing.
pub fn api_target(path: &str, node: &serde_json::Value) -> Result<SyncTarget, Vec<String>> {
    if node.get("credentials-env").is_some() {
        return Err(vec![format!(
            "{path}.credentials-env: not accepted over the API (it reads the service's \
             environment); send `credentials`"
        )]);
    }
    let node = serde_yaml_ng::to_value(node).map_err(|e| vec![format!("{path}: {e}")])?;
    let mut problems = Vec::new();
    let target = own::sync_target(path, node, &|_| None, &mut problems);
    match target {
        Some(SyncTarget::Registry { .. }) if problems.is_empty() => Ok(target.expect("some")),
        Some(SyncTarget::Store) => Err(vec![format!(
            "{path}: a copy job goes to registries: give `{{\"registry\": \"HOST[:PORT][/PREFIX]\"}}`"
        )]),
        _ => Err(problems),
    }
}

/// A source's name: it appears in API paths, logs and metric labels.
pub fn valid_source_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a source name: use up to 128 letters, digits, '.', '_', '-' and \
             ':', starting with a letter or digit"
        ))
    }
}

/// Registry host of a config key, normalised as `Reference::registry` is.
fn registry_host(key: &str) -> Result<String, String> {
    let invalid = || {
        ReferenceError::InvalidHost {
            host: key.to_owned(),
        }
        .to_string()
    };
    if key.contains(['/', '@']) {
        return Err(invalid());
    }
    // The reference grammar's rule for telling a host from a Docker Hub namespace.
    if !key.contains(['.', ':']) && key != "localhost" {
        return Err(format!(
            "{key:?} is not a registry host: a host contains a '.' or a ':port', or is \
             localhost (image names would read it as a Docker Hub namespace)"
        ));
    }
    format!("{key}/x")
        .parse::<Reference>()
        .map(|r| r.registry)
        .map_err(|_| invalid())
}

/// Checks that two config keys do not name one registry ("docker.io", "index.docker.io").
fn unique_host(
    seen: &mut BTreeMap<String, String>,
    host: &str,
    path: &str,
    problems: &mut Vec<String>,
) -> bool {
    if let Some(first) = seen.get(host) {
        problems.push(format!(
            "{path}: the same registry as {first} (both are {host}); merge the two entries"
        ));
        return false;
    }
    seen.insert(host.to_owned(), path.to_owned());
    true
}

fn registry_settings(
    path: &str,
    tls_verify: Option<bool>,
    cert_dir: Option<String>,
    credentials: Option<RawCredentials>,
    credentials_env: Option<String>,
    env: Env,
    problems: &mut Vec<String>,
) -> RegistrySettings {
    let cert_dir = match cert_dir {
        Some(d) if d.is_empty() => {
            problems.push(format!(
                "{path}.cert-dir: empty; give the directory holding the registry's CA \
                 certificates and client keys, or remove `cert-dir`"
            ));
            None
        }
        d => d.map(PathBuf::from),
    };
    let mut pair = None;
    if let Some(c) = credentials {
        for (field, value) in [("username", &c.username), ("password", &c.password)] {
            if value.is_empty() {
                problems.push(format!(
                    "{path}.credentials.{field}: empty; give both username and password, or \
                     remove `credentials` for anonymous access"
                ));
            }
        }
        pair = Some((c.username, c.password));
    }
    if let Some(var) = credentials_env {
        let valid_name = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if pair.is_some() {
            problems.push(format!(
                "{path}: `credentials` and `credentials-env` are both given; keep one"
            ));
        } else if !valid_name {
            problems.push(format!(
                "{path}.credentials-env: {var:?} is not an environment variable name prefix; \
                 use letters, digits and '_', not starting with a digit"
            ));
        } else {
            let (user_var, pass_var) = (format!("{var}_USERNAME"), format!("{var}_PASSWORD"));
            let get = |name: &str| env(name).filter(|v| !v.is_empty());
            match (get(&user_var), get(&pass_var)) {
                (Some(user), Some(pass)) => pair = Some((user, pass)),
                (user, pass) => {
                    let unset: Vec<String> = [(user, &user_var), (pass, &pass_var)]
                        .into_iter()
                        .filter(|(v, _)| v.is_none())
                        .map(|(_, name)| format!("${name}"))
                        .collect();
                    problems.push(format!(
                        "{path}.credentials-env: {} {} unset or empty; export {user_var} and \
                         {pass_var}, or give `credentials`",
                        unset.join(" and "),
                        if unset.len() == 1 { "is" } else { "are" }
                    ));
                }
            }
        }
    }
    RegistrySettings {
        tls_verify: tls_verify.unwrap_or(true),
        cert_dir,
        credentials: pair,
        verify: None,
    }
}

/// `verify: {keys: [FILE...], require: any|all}`: each key file read and parsed now, so
/// that a wrong path or key is reported with the rest of the file's problems.
fn policy(path: &str, raw: RawVerify, problems: &mut Vec<String>) -> Option<Arc<Policy>> {
    let before = problems.len();
    if raw.keys.is_empty() {
        problems.push(format!(
            "{path}.keys: empty; list the public keys (PEM files, such as cosign.pub) whose \
             signatures are trusted, or remove `verify`"
        ));
    }
    let keys: Vec<Arc<TrustedKey>> = raw
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, file)| {
            TrustedKey::load(Path::new(file))
                .map_err(|e| {
                    let chain = crate::report::error_chain(&e).join(": ");
                    problems.push(format!("{path}.keys[{i}]: {chain}"));
                })
                .ok()
                .map(Arc::new)
        })
        .collect();
    let require = match raw.require.as_deref().map(str::parse::<Require>) {
        None => Require::Any,
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            problems.push(format!("{path}.require: {e}"));
            Require::Any
        }
    };
    (problems.len() == before).then(|| Arc::new(Policy { keys, require }))
}

/// A repository reference without tag or digest; those have their own fields.
/// Parse each entry of a list field, keeping the first of equal values; bad entries are
/// reported at their index.
fn parse_distinct<T>(
    field: &str,
    list: &Option<Vec<String>>,
    report: &mut impl FnMut(&str, String),
) -> Vec<T>
where
    T: std::str::FromStr + PartialEq,
    T::Err: fmt::Display,
{
    let mut out: Vec<T> = Vec::new();
    for (j, item) in list.as_deref().unwrap_or_default().iter().enumerate() {
        match item.parse::<T>() {
            Ok(v) if !out.contains(&v) => out.push(v),
            Ok(_) => {}
            Err(e) => report(&format!(".{field}[{j}]"), e.to_string()),
        }
    }
    out
}

fn parse_source(s: &str, tag_hint: &str, digest_hint: &str) -> Result<Reference, String> {
    let r: Reference = s.parse().map_err(|e: ReferenceError| e.to_string())?;
    if r.digest.is_some() {
        return Err(format!(
            "{s:?} names a digest; give the repository only and {digest_hint}"
        ));
    }
    // The parser fills in "latest" when no tag is written, so look at the text.
    if s.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        return Err(format!(
            "{s:?} names a tag; give the repository only and {tag_hint}"
        ));
    }
    Ok(Reference {
        tag: None,
        digest: None,
        ..r
    })
}

/// Rejects two specs that would write into one stored repository with different content.
fn check_targets(specs: &[(String, ImageSpec)], hint: &str, problems: &mut Vec<String>) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (path, spec)) in specs.iter().enumerate() {
        let Some(&j) = first.get(spec.target.as_str()) else {
            first.insert(&spec.target, i);
            continue;
        };
        let (other_path, other) = &specs[j];
        let same_platforms = spec.platforms.len() == other.platforms.len()
            && spec.platforms.iter().all(|p| other.platforms.contains(p));
        if other.source != spec.source {
            problems.push(format!(
                "{path}: stores {} as {:?}, which {other_path} already uses for {}; two \
                 repositories cannot share a target: {hint}",
                spec.source, spec.target, other.source
            ));
        } else if !same_platforms
            || other.referrers != spec.referrers
            || other.verify != spec.verify
        {
            problems.push(format!(
                "{path}: mirrors {} into {:?} like {other_path} but with different `platforms`, \
                 `referrers` or `verify`; merge the two entries",
                spec.source, spec.target
            ));
        }
    }
}

/// Adds default settings for registries that images use but the file does not configure.
fn complete_registries(
    registries: &mut BTreeMap<String, RegistrySettings>,
    specs: &[(String, ImageSpec)],
) {
    for (_, spec) in specs {
        registries.entry(spec.source.registry.clone()).or_default();
    }
}

/// Our own format.
mod own {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        prefix: Option<String>,
        registries: Option<Ordered<Option<Registry>>>,
        images: Option<Vec<Image>>,
        to: Option<Vec<Value>>,
        #[serde(rename = "on-change")]
        on_change: Option<Value>,
        interval: Option<String>,
        cron: Option<String>,
        /// gen-conf's mappings (`static-registry gen-conf --mappings FILE`), read there.
        serve: Option<Value>,
    }

    /// The top level with its children unread, for salvage.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shell {
        prefix: Option<Value>,
        registries: Option<Mapping>,
        images: Option<Vec<Value>>,
        to: Option<Vec<Value>>,
        #[serde(rename = "on-change")]
        on_change: Option<Value>,
        interval: Option<Value>,
        cron: Option<Value>,
        #[serde(rename = "serve")]
        _serve: Option<Value>,
    }

    /// `on-change:` as a mapping.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct ReloadNginx {
        reload_nginx: String,
        #[serde(default)]
        gen_conf_args: Vec<String>,
    }

    /// A registry `sync` sends to.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct RegistryTo {
        registry: String,
        tls_verify: Option<bool>,
        cert_dir: Option<String>,
        credentials: Option<RawCredentials>,
        credentials_env: Option<String>,
        overwrite: Option<String>,
    }

    #[derive(Deserialize)]
    struct PrefixOnly {
        prefix: String,
    }
    #[derive(Deserialize)]
    struct RegistriesOnly {
        registries: Ordered<Option<Registry>>,
    }
    #[derive(Deserialize)]
    struct ImagesOnly {
        images: Vec<Option<Image>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub(super) struct Registry {
        tls_verify: Option<bool>,
        cert_dir: Option<String>,
        credentials: Option<RawCredentials>,
        credentials_env: Option<String>,
        verify: Option<RawVerify>,
        name: Option<String>,
        interval: Option<String>,
        cron: Option<String>,
        images_from: Option<Vec<String>>,
        to: Option<Vec<Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub(super) struct Image {
        source: String,
        target: Option<String>,
        tags: Option<Vec<String>>,
        all_tags: Option<bool>,
        allow: Option<Vec<String>>,
        deny: Option<Vec<String>>,
        semver: Option<String>,
        latest: Option<usize>,
        digests: Option<Vec<String>>,
        platforms: Option<Vec<String>>,
        referrers: Option<bool>,
        verify: Option<RawVerify>,
    }

    #[derive(Default)]
    pub(super) struct Parts {
        prefix: Option<String>,
        to: Vec<Value>,
        on_change: Option<Value>,
        interval: Option<String>,
        cron: Option<String>,
        registries: Vec<(String, Registry)>,
        /// (index in the file, image): salvage may skip broken entries.
        images: Vec<(usize, Image)>,
        /// Entries in the file, read or not: "no images" only when there are none.
        image_nodes: usize,
        /// The file has gen-conf's `serve:` section.
        serve: bool,
    }

    pub(super) fn read(text: &str, doc: &Value, problems: &mut Vec<String>) -> Option<Parts> {
        let whole = |f: File| {
            let images = f.images.unwrap_or_default();
            Parts {
                prefix: f.prefix,
                to: f.to.unwrap_or_default(),
                on_change: f.on_change,
                interval: f.interval,
                cron: f.cron,
                registries: registries_of(f.registries.unwrap_or_default()),
                image_nodes: images.len(),
                images: images.into_iter().enumerate().collect(),
                serve: f.serve.is_some(),
            }
        };
        read_or_salvage(text, problems, whole, |found| salvage(doc, found))
    }

    fn registries_of(r: Ordered<Option<Registry>>) -> Vec<(String, Registry)> {
        r.0.into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect()
    }

    fn salvage(doc: &Value, found: &mut Vec<String>) -> Option<Parts> {
        // A broken top level (unknown key, `images` not a list) leaves nothing to salvage.
        let shell: Shell = serde_yaml_ng::from_value(doc.clone()).ok()?;
        let text = |field: &str, v: Option<Value>, found: &mut Vec<String>| match v {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                found.push(format!(
                    "{field}: expected text, e.g. 15m or \"*/30 * * * *\""
                ));
                None
            }
            None => None,
        };
        let mut parts = Parts {
            to: shell.to.unwrap_or_default(),
            interval: text("interval", shell.interval, found),
            cron: text("cron", shell.cron, found),
            ..Parts::default()
        };
        parts.on_change = shell.on_change;
        if let Some(prefix) = shell.prefix {
            match read_node::<PrefixOnly>(single("prefix", prefix)) {
                Ok(p) => parts.prefix = Some(p.prefix),
                Err(e) => found.push(e),
            }
        }
        for (key, node) in shell.registries.unwrap_or_default() {
            let wrapped = single("registries", single(&key_text(&key), node));
            match read_node::<RegistriesOnly>(wrapped) {
                Ok(r) => parts.registries.extend(registries_of(r.registries)),
                Err(e) => found.push(e),
            }
        }
        let images = shell.images.unwrap_or_default();
        parts.image_nodes = images.len();
        for (i, node) in images.into_iter().enumerate() {
            // Nulls before the entry keep its index, and so serde's `images[i]` path.
            let mut seq = vec![Value::Null; i];
            seq.push(node);
            match read_node::<ImagesOnly>(single("images", Value::Sequence(seq))) {
                Ok(mut r) => parts
                    .images
                    .extend(r.images.pop().flatten().map(|img| (i, img))),
                Err(e) => found.push(e),
            }
        }
        Some(parts)
    }

    pub(super) fn build(parts: Parts, env: Env, problems: &mut Vec<String>) -> MirrorConfig {
        let prefix = parts
            .prefix
            .filter(|prefix| match validate_repository(prefix) {
                Ok(()) => true,
                Err(e) => {
                    problems.push(format!("prefix: {e}"));
                    false
                }
            });

        let mut registries = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for (key, raw) in parts.registries {
            let path = format!("registries.{key}");
            let verify = raw
                .verify
                .and_then(|v| policy(&format!("{path}.verify"), v, problems));
            let mut settings = registry_settings(
                &path,
                raw.tls_verify,
                raw.cert_dir,
                raw.credentials,
                raw.credentials_env,
                env,
                problems,
            );
            settings.verify = verify;
            let source = source_settings(
                &path,
                SourceParts {
                    name: raw.name,
                    interval: raw.interval,
                    cron: raw.cron,
                    images_from: raw.images_from,
                    to: raw.to,
                },
                env,
                problems,
            );
            match registry_host(&key) {
                Ok(host) => {
                    if unique_host(&mut seen, &host, &path, problems) {
                        if source != SourceSettings::default() {
                            sources.insert(host.clone(), source);
                        }
                        registries.insert(host, settings);
                    }
                }
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        let schedule = schedule("", parts.interval, parts.cron, problems);
        let listing = sources.values().any(|s| !s.images_from.is_empty());

        if parts.image_nodes == 0 && !listing {
            problems.push(
                "images: no images listed; add entries such as `- {source: \
                 docker.io/library/alpine, tags: [\"3.20\"]}`"
                    .to_owned(),
            );
        }
        let mut specs: Vec<(String, ImageSpec)> = parts
            .images
            .into_iter()
            .filter_map(|(i, raw)| {
                let path = format!("images[{i}]");
                image(&path, raw, prefix.as_deref(), problems).map(|spec| (path, spec))
            })
            .collect();
        check_targets(&specs, "give one of them a different `target`", problems);
        complete_registries(&mut registries, &specs);
        for (_, spec) in &mut specs {
            if spec.verify.is_none() {
                spec.verify = registries[&spec.source.registry].verify.clone();
            }
        }
        let to = parts
            .to
            .into_iter()
            .enumerate()
            .filter_map(|(i, node)| sync_target(&format!("to[{i}]"), node, env, problems))
            .collect::<Vec<_>>();
        if to.iter().filter(|t| **t == SyncTarget::Store).count() > 1 {
            problems.push("to: `store` is listed more than once; keep one".to_owned());
        }
        let on_change = parts.on_change.and_then(|v| on_change(v, problems));
        let config = MirrorConfig {
            registries,
            images: specs.into_iter().map(|(_, spec)| spec).collect(),
            format: Format::Own,
            to,
            on_change,
            prefix,
            schedule,
            sources,
            serve: parts.serve,
        };
        check_names(&config, problems);
        config
    }

    /// `on-change:`: a command, or `{reload-nginx: CONF, gen-conf-args: [...]}`.
    fn on_change(node: Value, problems: &mut Vec<String>) -> Option<OnChange> {
        let empty = "on-change: the command is empty; give the program and its arguments, \
                     e.g. [systemctl, reload, my-cache], or {reload-nginx: \
                     /etc/nginx/conf.d/registry.conf}";
        match node {
            Value::Sequence(_) => match serde_yaml_ng::from_value::<Vec<String>>(node) {
                Ok(c) if c.first().is_none_or(String::is_empty) => {
                    problems.push(empty.to_owned());
                    None
                }
                Ok(c) => Some(OnChange::Command(c)),
                Err(e) => {
                    problems.push(format!("on-change: {e}"));
                    None
                }
            },
            Value::Mapping(_) => match serde_yaml_ng::from_value::<ReloadNginx>(node) {
                Ok(r) if r.reload_nginx.is_empty() => {
                    problems.push(
                        "on-change.reload-nginx: empty; give the file nginx includes, e.g. \
                         /etc/nginx/conf.d/registry.conf"
                            .to_owned(),
                    );
                    None
                }
                Ok(r) => Some(OnChange::ReloadNginx {
                    conf: PathBuf::from(r.reload_nginx),
                    args: r.gen_conf_args,
                }),
                Err(e) => {
                    problems.push(format!("on-change: {e}"));
                    None
                }
            },
            _ => {
                problems.push(empty.to_owned());
                None
            }
        }
    }

    struct SourceParts {
        name: Option<String>,
        interval: Option<String>,
        cron: Option<String>,
        images_from: Option<Vec<String>>,
        to: Option<Vec<Value>>,
    }

    fn source_settings(
        path: &str,
        raw: SourceParts,
        env: Env,
        problems: &mut Vec<String>,
    ) -> SourceSettings {
        let name = raw.name.filter(|name| match valid_source_name(name) {
            Ok(()) => true,
            Err(e) => {
                problems.push(format!("{path}.name: {e}"));
                false
            }
        });
        let given = raw.images_from.is_some();
        let images_from = raw.images_from.unwrap_or_default();
        if given && images_from.first().is_none_or(String::is_empty) {
            problems.push(format!(
                "{path}.images-from: the command is empty; give the program and its arguments, \
                 e.g. [./list-images.sh, --stable]"
            ));
        }
        let to = raw.to.map(|nodes| {
            nodes
                .into_iter()
                .enumerate()
                .filter_map(|(i, node)| {
                    sync_target(&format!("{path}.to[{i}]"), node, env, problems)
                })
                .collect()
        });
        SourceSettings {
            name,
            schedule: schedule(&format!("{path}."), raw.interval, raw.cron, problems),
            images_from,
            to,
        }
    }

    /// `interval:` or `cron:` (not both) at `path`.
    fn schedule(
        path: &str,
        interval: Option<String>,
        cron: Option<String>,
        problems: &mut Vec<String>,
    ) -> Option<Schedule> {
        let parsed = match (interval, cron) {
            (Some(_), Some(_)) => Err(format!(
                "{path}interval and {path}cron are both given; keep one"
            )),
            (Some(i), None) => Schedule::interval(&i).map_err(|e| format!("{path}interval: {e}")),
            (None, Some(c)) => Schedule::cron(&c).map_err(|e| format!("{path}cron: {e}")),
            (None, None) => return None,
        };
        parsed.map_err(|e| problems.push(e)).ok()
    }

    /// Two sources may not share a name: the API and the metrics tell them apart by it.
    fn check_names(config: &MirrorConfig, problems: &mut Vec<String>) {
        let mut seen = BTreeMap::new();
        for source in config.sources() {
            if let Some(first) = seen.insert(source.name.clone(), source.registry.clone()) {
                problems.push(format!(
                    "registries.{}.name: {:?} is also the name of the source {first}; give \
                     each source its own name",
                    source.registry, source.name
                ));
            }
        }
    }

    /// One `to:` entry: `store`, or a registry with its settings.
    pub(super) fn sync_target(
        path: &str,
        node: Value,
        env: Env,
        problems: &mut Vec<String>,
    ) -> Option<SyncTarget> {
        let raw = match node {
            Value::String(s) if s == "store" => return Some(SyncTarget::Store),
            Value::Mapping(_) => match serde_yaml_ng::from_value::<RegistryTo>(node) {
                Ok(raw) => raw,
                Err(e) => {
                    problems.push(format!("{path}: {e}"));
                    return None;
                }
            },
            _ => {
                problems.push(format!(
                    "{path}: expected `store` or a mapping with `registry: HOST[:PORT][/PREFIX]` \
                     (and optionally tls-verify, cert-dir, credentials, credentials-env, overwrite)"
                ));
                return None;
            }
        };
        let settings = registry_settings(
            path,
            raw.tls_verify,
            raw.cert_dir,
            raw.credentials,
            raw.credentials_env,
            env,
            problems,
        );
        let overwrite = match raw.overwrite.as_deref().map(str::parse::<Overwrite>) {
            None => Some(Overwrite::Replace),
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => {
                problems.push(format!("{path}.overwrite: {e}"));
                None
            }
        };
        let target = match raw.registry.parse::<Target>() {
            Ok(t) if t.tag.is_some() => {
                problems.push(format!(
                    "{path}.registry: {:?} names a tag; give HOST[:PORT][/PREFIX] (each image keeps its own tags)",
                    raw.registry
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                let why = match &e {
                    crate::plan::PlanError::Target { reason, .. } => (*reason).to_owned(),
                    _ => crate::report::error_chain(&e)[1..].join(": "),
                };
                problems.push(format!("{path}.registry: {:?}: {why}", raw.registry));
                None
            }
        };
        Some(SyncTarget::Registry {
            target: target?,
            settings,
            overwrite: overwrite?,
        })
    }

    /// One entry; `None` (with its problems recorded) when anything in it is wrong.
    fn image(
        path: &str,
        raw: Image,
        prefix: Option<&str>,
        problems: &mut Vec<String>,
    ) -> Option<ImageSpec> {
        let mut errs = Vec::new();
        let verify = raw
            .verify
            .and_then(|v| policy(&format!("{path}.verify"), v, &mut errs));
        let mut report = |field: &str, msg: String| errs.push(format!("{path}{field}: {msg}"));

        // Judged on what was written, so a range that fails to parse still counts as the
        // intended selection and only its own error is reported.
        let all_tags = raw.all_tags.unwrap_or(false);
        let non_empty = |l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| !l.is_empty());
        let lists =
            all_tags || non_empty(&raw.allow) || raw.semver.is_some() || raw.latest.is_some();
        if raw.tags.is_none() && !non_empty(&raw.digests) && !lists {
            report(
                "",
                format!(
                    "selects nothing from {:?}; add `tags: [...]`, `all-tags: true`, \
                     `allow: [...]`, `semver: \"...\"`, `latest: N` or `digests: [...]`",
                    raw.source
                ),
            );
        }

        let source = parse_source(
            &raw.source,
            "list the tag under `tags`",
            "list the digest under `digests`",
        )
        .map_err(|e| report(".source", e))
        .ok();
        if let Some(t) = &raw.target
            && let Err(e) = validate_repository(t)
        {
            report(".target", e.to_string());
        }
        if let Some(tags) = &raw.tags {
            if tags.is_empty() {
                report(
                    ".tags",
                    "an empty list selects no tag; list tags, or use `all-tags: true` for \
                     every tag"
                        .into(),
                );
            }
            for (j, t) in tags.iter().enumerate() {
                if let Err(e) = validate_tag(t) {
                    report(&format!(".tags[{j}]"), e.to_string());
                }
            }
            if all_tags {
                report(
                    "",
                    "`tags` and `all-tags: true` contradict each other; keep `tags` for a \
                     fixed list, or `all-tags` (narrowed by allow/deny/semver/latest if needed)"
                        .into(),
                );
            }
        }
        let mut regexes = |field: &str, list: &Option<Vec<String>>| -> Vec<regex::Regex> {
            let list = list.as_deref().unwrap_or_default();
            list.iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    select::compile_regex(s, true)
                        .map_err(|e| report(&format!(".{field}[{j}]"), e.to_string()))
                        .ok()
                })
                .collect()
        };
        let allow = regexes("allow", &raw.allow);
        let deny = regexes("deny", &raw.deny);
        let semver = raw.semver.as_deref().and_then(|s| {
            select::parse_semver_range(s)
                .map_err(|e| report(".semver", e.to_string()))
                .ok()
        });
        if raw.latest == Some(0) {
            report(
                ".latest",
                "0 keeps no tag; give how many of the newest versions to keep, or remove \
                 `latest`"
                    .into(),
            );
        }
        let digests: Vec<Digest> = parse_distinct("digests", &raw.digests, &mut report);
        let platforms: Vec<PlatformSpec> = parse_distinct("platforms", &raw.platforms, &mut report);

        let source = source.filter(|_| errs.is_empty());
        problems.append(&mut errs);
        let source = source?;
        let name = raw.target.unwrap_or_else(|| source.repository.clone());
        let target = match prefix {
            Some(prefix) => format!("{prefix}/{name}"),
            None => name,
        };
        if let Err(e) = validate_repository(&target) {
            problems.push(format!("{path}.target: {e}"));
            return None;
        }
        Some(ImageSpec {
            source,
            target,
            tags: TagSelector {
                // No tags field and no filter: a digests-only entry selects no tag at all.
                tags: raw.tags.or_else(|| (!lists).then(Vec::new)),
                allow,
                deny,
                semver,
                latest: raw.latest,
            },
            digests,
            platforms,
            referrers: raw.referrers.unwrap_or(false),
            verify,
        })
    }
}

/// skopeo sync's format, read as skopeo does.
mod skopeo {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub(super) struct Registry {
        images: Option<Ordered<Option<Vec<String>>>>,
        images_by_tag_regex: Option<Ordered<String>>,
        images_by_semver: Option<Ordered<String>>,
        credentials: Option<RawCredentials>,
        tls_verify: Option<bool>,
        cert_dir: Option<String>,
    }

    pub(super) type Parts = Vec<(String, Registry)>;

    pub(super) fn read(text: &str, doc: &Value, problems: &mut Vec<String>) -> Option<Parts> {
        let flatten = |o: Ordered<Option<Registry>>| -> Parts {
            o.0.into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect()
        };
        let salvage = |found: &mut Vec<String>| {
            let mut parts = Vec::new();
            for (key, node) in doc.as_mapping()? {
                match read_node::<Ordered<Option<Registry>>>(single(&key_text(key), node.clone())) {
                    Ok(r) => parts.extend(flatten(r)),
                    Err(e) => found.push(e),
                }
            }
            Some(parts)
        };
        read_or_salvage(text, problems, flatten, salvage)
    }

    pub(super) fn build(parts: Parts, env: Env, problems: &mut Vec<String>) -> MirrorConfig {
        let mut registries = BTreeMap::new();
        let mut seen = BTreeMap::new();
        let mut specs = Vec::new();
        for (key, raw) in parts {
            let settings = registry_settings(
                &key,
                raw.tls_verify,
                raw.cert_dir,
                raw.credentials,
                None,
                env,
                problems,
            );
            let host = match registry_host(&key) {
                Ok(host) => host,
                Err(e) => {
                    // Its images would only repeat the host error.
                    problems.push(format!("{key}: {e}"));
                    continue;
                }
            };
            if !unique_host(&mut seen, &host, &key, problems) {
                continue;
            }
            registries.insert(host, settings);

            for (repo, refs) in raw.images.unwrap_or_default().0 {
                let path = format!("{key}.images.{repo}");
                let (selector, digests) = references(&path, refs, problems);
                specs.extend(spec(&key, &repo, path, selector, digests, problems));
            }
            for (repo, pattern) in raw.images_by_tag_regex.unwrap_or_default().0 {
                let path = format!("{key}.images-by-tag-regex.{repo}");
                // skopeo matches with Go's MatchString: anywhere in the tag.
                let selector = select::compile_regex(&pattern, false)
                    .map(|re| TagSelector {
                        allow: vec![re],
                        ..Default::default()
                    })
                    .map_err(|e| problems.push(format!("{path}: {e}")))
                    .ok();
                specs.extend(spec(&key, &repo, path, selector, Vec::new(), problems));
            }
            for (repo, range) in raw.images_by_semver.unwrap_or_default().0 {
                let path = format!("{key}.images-by-semver.{repo}");
                let selector = skopeo_range(&range)
                    .map(|req| TagSelector {
                        semver: Some(req),
                        ..Default::default()
                    })
                    .map_err(|e| problems.push(format!("{path}: {e}")))
                    .ok();
                specs.extend(spec(&key, &repo, path, selector, Vec::new(), problems));
            }
        }
        if specs.is_empty() && problems.is_empty() {
            problems.push(
                "no images listed; add `images:`, `images-by-tag-regex:` or \
                 `images-by-semver:` under a registry"
                    .to_owned(),
            );
        }
        check_targets(
            &specs,
            "skopeo sync stores by repository path, so use our own format and rename one \
             with `target`",
            problems,
        );
        complete_registries(&mut registries, &specs);
        MirrorConfig {
            registries,
            images: specs.into_iter().map(|(_, spec)| spec).collect(),
            format: Format::SkopeoSync,
            to: Vec::new(),
            on_change: None,
            prefix: None,
            schedule: None,
            sources: BTreeMap::new(),
            serve: false,
        }
    }

    /// A spec for `repo` under registry `key`, stored by its repository path as skopeo sync
    /// does; `None` when the name or the (already reported) selection is wrong.
    fn spec(
        key: &str,
        repo: &str,
        path: String,
        tags: Option<TagSelector>,
        digests: Vec<Digest>,
        problems: &mut Vec<String>,
    ) -> Option<(String, ImageSpec)> {
        let source = parse_source(
            &format!("{key}/{repo}"),
            "list the tag in the repository's list",
            "list the digest in the repository's list",
        )
        .map_err(|e| problems.push(format!("{path}: {e}")))
        .ok()?;
        let spec = ImageSpec {
            target: source.repository.clone(),
            source,
            tags: tags?,
            digests,
            platforms: Vec::new(),
            referrers: false,
            verify: None,
        };
        Some((path, spec))
    }

    /// An `images` entry: an empty (or null) list means every tag; otherwise each item is a
    /// tag, or a digest when it contains ':' (as skopeo decides).
    fn references(
        path: &str,
        refs: Option<Vec<String>>,
        problems: &mut Vec<String>,
    ) -> (Option<TagSelector>, Vec<Digest>) {
        let refs = refs.unwrap_or_default();
        if refs.is_empty() {
            return (Some(TagSelector::default()), Vec::new());
        }
        let before = problems.len();
        let (mut tags, mut digests) = (Vec::new(), Vec::new());
        for (j, r) in refs.into_iter().enumerate() {
            if r.contains(':') {
                match r.parse::<Digest>() {
                    Ok(d) if !digests.contains(&d) => digests.push(d),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{path}[{j}]: {e}")),
                }
            } else {
                match validate_tag(&r) {
                    Ok(()) => tags.push(r),
                    Err(e) => problems.push(format!("{path}[{j}]: {e}")),
                }
            }
        }
        let selector = TagSelector {
            tags: Some(tags),
            ..Default::default()
        };
        ((problems.len() == before).then_some(selector), digests)
    }

    /// skopeo reads ranges with Masterminds/semver, where a bare version means "=" (`1.2` is
    /// 1.2.x) and a version may start with 'v'; Cargo's grammar reads a bare version as "^"
    /// and has no 'v'. Translating those two keeps a skopeo file's meaning; other syntax is
    /// passed on and reported if Cargo's grammar rejects it.
    pub(super) fn skopeo_range(s: &str) -> Result<semver::VersionReq, SelectError> {
        let translated: Vec<String> = s
            .split(',')
            .map(|comparator| {
                let c = comparator.trim();
                let at = c
                    .find(|ch: char| ch.is_ascii_alphanumeric() || ch == '*')
                    .unwrap_or(c.len());
                let (op, version) = (c[..at].trim(), &c[at..]);
                let version = match version.strip_prefix('v') {
                    Some(v) if v.starts_with(|ch: char| ch.is_ascii_digit()) => v,
                    _ => version,
                };
                let wildcard = version.contains(['*', 'x', 'X']);
                let op = if op.is_empty() && !wildcard { "=" } else { op };
                format!("{op}{version}")
            })
            .collect();
        select::parse_semver_range(&translated.join(", ")).map_err(|e| match e {
            SelectError::SemverRange { reason, .. } => SelectError::SemverRange {
                input: s.to_owned(),
                reason,
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn env(name: &str) -> Option<String> {
        match name {
            "HUB_USERNAME" => Some("hubuser".into()),
            "HUB_PASSWORD" => Some("hubpass".into()),
            "HALF_USERNAME" => Some("u".into()),
            "EMPTY_USERNAME" | "EMPTY_PASSWORD" => Some(String::new()),
            _ => None,
        }
    }

    fn ok(yaml: &str) -> MirrorConfig {
        parse_with_env(yaml, "m.yaml", &env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(yaml: &str) -> Vec<String> {
        match parse_with_env(yaml, "m.yaml", &env) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(ConfigError::Invalid { file, problems }) => {
                assert_eq!(file, "m.yaml");
                problems
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The single problem of a config with one error.
    fn problem(yaml: &str) -> String {
        let p = problems(yaml);
        assert_eq!(p.len(), 1, "{p:#?}");
        p.into_iter().next().unwrap()
    }

    fn reference(s: &str) -> Reference {
        let r: Reference = s.parse().unwrap();
        Reference { tag: None, ..r }
    }

    fn anchored(s: &str) -> regex::Regex {
        select::compile_regex(s, true).unwrap()
    }

    #[test]
    fn example_file() {
        let c = ok(include_str!("../examples/mirror.yaml"));
        assert_eq!(c.format, Format::Own);
        assert_eq!(
            c.registries.keys().collect::<Vec<_>>(),
            ["docker.io", "ghcr.io", "localhost:5000"]
        );
        assert_eq!(c.registries["docker.io"], RegistrySettings::default());
        assert_eq!(c.registries["ghcr.io"], RegistrySettings::default());
        assert_eq!(
            c.registries["localhost:5000"],
            RegistrySettings {
                tls_verify: false,
                cert_dir: None,
                credentials: None,
                verify: None,
            }
        );
        let amd_arm = vec![
            "linux/amd64".parse().unwrap(),
            "linux/arm64".parse().unwrap(),
        ];
        assert_eq!(
            c.images,
            vec![
                ImageSpec {
                    source: reference("docker.io/library/alpine"),
                    target: "mirror/base/alpine".into(),
                    tags: TagSelector {
                        tags: Some(vec!["3.19".into(), "3.20".into()]),
                        ..Default::default()
                    },
                    digests: vec![],
                    platforms: amd_arm.clone(),
                    referrers: false,
                    verify: None,
                },
                ImageSpec {
                    source: reference("docker.io/library/busybox"),
                    target: "mirror/library/busybox".into(),
                    tags: TagSelector {
                        allow: vec![anchored(r"1\.3[67]\..*")],
                        deny: vec![anchored(".*-(uclibc|musl|glibc)")],
                        latest: Some(2),
                        ..Default::default()
                    },
                    digests: vec![],
                    platforms: amd_arm,
                    referrers: false,
                    verify: None,
                },
                ImageSpec {
                    source: reference("ghcr.io/sigstore/cosign/cosign"),
                    target: "mirror/sigstore/cosign/cosign".into(),
                    tags: TagSelector {
                        semver: Some(select::parse_semver_range(">=2.4, <3").unwrap()),
                        latest: Some(1),
                        ..Default::default()
                    },
                    digests: vec![],
                    platforms: vec![],
                    referrers: true,
                    verify: None,
                },
                ImageSpec {
                    source: reference("docker.io/library/hello-world"),
                    target: "mirror/library/hello-world".into(),
                    tags: TagSelector {
                        deny: vec![anchored("nanoserver.*"), anchored(".*windows.*")],
                        ..Default::default()
                    },
                    digests: vec![],
                    platforms: vec![],
                    referrers: false,
                    verify: None,
                },
            ]
        );
        assert!(c.images[3].tags.needs_listing());
    }

    #[test]
    fn own_format_details() {
        let c = ok(&format!(
            "registries:\n  Index.Docker.io:\n    credentials-env: HUB\n    cert-dir: /certs\n  \
             127.0.0.1:5000: {{tls-verify: false, credentials: {{username: a, password: b}}}}\n\
             images:\n  - source: 127.0.0.1:5000/team/app\n    digests: [\"sha256:{H1}\", \"sha256:{H1}\"]\n    \
             platforms: [linux/arm/v7, linux/arm/v7]\n  - {{source: alpine, tags: [3.20, 3.10], semver: \"^3\"}}\n"
        ));
        assert_eq!(c.registries.len(), 2);
        let hub = &c.registries["docker.io"];
        assert_eq!(
            hub.credentials,
            Some(("hubuser".to_owned(), "hubpass".to_owned()))
        );
        assert_eq!(hub.cert_dir.as_deref(), Some(Path::new("/certs")));
        assert!(hub.tls_verify);
        assert!(!format!("{hub:?}").contains("hubpass"));
        let local = &c.registries["127.0.0.1:5000"];
        assert_eq!(local.credentials, Some(("a".to_owned(), "b".to_owned())));
        assert!(!local.tls_verify);

        let app = &c.images[0];
        assert_eq!(app.target, "team/app");
        assert_eq!(app.digests, vec![Digest::sha256_from_hex(H1).unwrap()]);
        assert_eq!(app.platforms, vec!["linux/arm/v7".parse().unwrap()]);
        // Digests only: no tag is selected and none is listed.
        assert_eq!(app.tags.tags, Some(vec![]));
        assert!(!app.tags.needs_listing());
        // Unquoted 3.20 stays "3.20", not the number 3.2.
        assert_eq!(
            c.images[1].tags.tags,
            Some(vec!["3.20".into(), "3.10".into()])
        );
        assert_eq!(c.images[1].target, "library/alpine");
    }

    #[test]
    fn skopeo_sync_sample() {
        let yaml = format!(
            r#"registry.example.com:
  images:
    busybox: []
    redis: ["1.0", "2.0", "sha256:{H1}"]
  images-by-tag-regex:
    nginx: ^1\.13\.[12]-alpine-perl$
  images-by-semver:
    alpine: ">= 3.12.0"
  credentials: {{username: john, password: this is a secret}}
  tls-verify: true
  cert-dir: /home/john/certs
quay.io:
  tls-verify: false
  images:
    coreos/etcd: ["latest"]
"#
        );
        let c = ok(&yaml);
        assert_eq!(c.format, Format::SkopeoSync);
        let mut registries = BTreeMap::new();
        registries.insert(
            "registry.example.com".to_owned(),
            RegistrySettings {
                tls_verify: true,
                cert_dir: Some("/home/john/certs".into()),
                credentials: Some(("john".into(), "this is a secret".into())),
                verify: None,
            },
        );
        registries.insert(
            "quay.io".to_owned(),
            RegistrySettings {
                tls_verify: false,
                cert_dir: None,
                credentials: None,
                verify: None,
            },
        );
        assert_eq!(c.registries, registries);
        let spec =
            |source: &str, target: &str, tags: TagSelector, digests: Vec<Digest>| ImageSpec {
                source: reference(source),
                target: target.into(),
                tags,
                digests,
                platforms: vec![],
                referrers: false,
                verify: None,
            };
        assert_eq!(
            c.images,
            vec![
                spec(
                    "registry.example.com/busybox",
                    "busybox",
                    TagSelector::default(),
                    vec![]
                ),
                spec(
                    "registry.example.com/redis",
                    "redis",
                    TagSelector {
                        tags: Some(vec!["1.0".into(), "2.0".into()]),
                        ..Default::default()
                    },
                    vec![Digest::sha256_from_hex(H1).unwrap()]
                ),
                spec(
                    "registry.example.com/nginx",
                    "nginx",
                    TagSelector {
                        allow: vec![
                            select::compile_regex(r"^1\.13\.[12]-alpine-perl$", false).unwrap()
                        ],
                        ..Default::default()
                    },
                    vec![]
                ),
                spec(
                    "registry.example.com/alpine",
                    "alpine",
                    TagSelector {
                        semver: Some(select::parse_semver_range(">=3.12.0").unwrap()),
                        ..Default::default()
                    },
                    vec![]
                ),
                spec(
                    "quay.io/coreos/etcd",
                    "coreos/etcd",
                    TagSelector {
                        tags: Some(vec!["latest".into()]),
                        ..Default::default()
                    },
                    vec![]
                ),
            ]
        );
    }

    #[test]
    fn skopeo_docker_hub_and_shared_targets() {
        // Docker Hub names normalise; one repository under two keys is a union, allowed.
        let c = ok(
            "docker.io:\n  images:\n    busybox: [\"1.36\"]\n  images-by-tag-regex:\n    \
                    busybox: musl\n",
        );
        assert_eq!(c.images.len(), 2);
        assert_eq!(c.images[0].source, reference("docker.io/library/busybox"));
        assert_eq!(c.images[0].target, "library/busybox");
        assert_eq!(c.images[1].target, "library/busybox");
        assert_eq!(c.registries.keys().collect::<Vec<_>>(), ["docker.io"]);
        // A null list is skopeo's "every tag", as Go reads it.
        let c = ok("quay.io:\n  images:\n    coreos/etcd:\n");
        assert_eq!(c.images[0].tags, TagSelector::default());
    }

    #[test]
    fn skopeo_semver_keeps_masterminds_meaning() {
        let req = |s: &str| skopeo::skopeo_range(s).unwrap().to_string();
        assert_eq!(req(">= 3.12.0"), ">=3.12.0");
        assert_eq!(req("1.2"), "=1.2");
        assert_eq!(req("v1.2.3"), "=1.2.3");
        assert_eq!(req(">=v1.2, <2"), ">=1.2, <2");
        assert_eq!(req("~1.2"), "~1.2");
        assert_eq!(req("1.2.x"), "1.2.*");
        let one_two = skopeo::skopeo_range("1.2").unwrap();
        assert!(one_two.matches(&"1.2.9".parse().unwrap()));
        assert!(!one_two.matches(&"1.3.0".parse().unwrap()));
        assert_eq!(
            skopeo::skopeo_range(">=1 <2").unwrap_err().to_string(),
            "invalid semver range \">=1 <2\": expected comma after major version number, found \
             '<'; write comma-separated comparators such as \">=1.2, <2\" using = > >= < <= ~ ^ \
             and wildcards like 1.2.* (`||` and hyphen ranges are not supported)"
        );
    }

    #[test]
    fn display_lists_every_problem() {
        let e = parse_with_env(
            "images:\n  - {source: alpine, latest: 0}\n  - {source: busybox, semver: \"1 2\"}\n",
            "m.yaml",
            &env,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.yaml: 2 problems:\n  - images[0].latest: 0 keeps no tag; give how many of the \
             newest versions to keep, or remove `latest`\n  - images[1].semver: invalid semver \
             range \"1 2\": expected comma after major version number, found '2'; write \
             comma-separated comparators such as \">=1.2, <2\" using = > >= < <= ~ ^ and \
             wildcards like 1.2.* (`||` and hyphen ranges are not supported)"
        );
        let e = parse_with_env("images: []\n", "m.yaml", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.yaml: 1 problem:\n  - images: no images listed; add entries such as `- {source: \
             docker.io/library/alpine, tags: [\"3.20\"]}`"
        );
        let e = load(Path::new("/nonexistent/m.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/m.yaml: cannot read: "),
            "{e}"
        );
    }

    #[test]
    fn structural_errors_are_located_and_all_reported() {
        // Two unknown keys in two images and a bad regex in a third: all three reported, the
        // first with its line and column (only the whole-file read knows them).
        let p = problems(
            "images:\n  - source: alpine\n    tagz: [a]\n  - source: busybox\n    \
             allow: ['(']\n  - source: nginx\n    platform: [linux/amd64]\n",
        );
        assert_eq!(
            p,
            [
                "images[0]: unknown field `tagz`, expected one of `source`, `target`, `tags`, \
                 `all-tags`, `allow`, `deny`, `semver`, `latest`, `digests`, `platforms`, \
                 `referrers`, `verify` at line 3 column 5",
                "images[2]: unknown field `platform`, expected one of `source`, `target`, \
                 `tags`, `all-tags`, `allow`, `deny`, `semver`, `latest`, `digests`, \
                 `platforms`, `referrers`, `verify`",
                "images[1].allow[0]: invalid regular expression '(': unclosed group (Rust regex \
                 syntax, close to Go's RE2)",
            ]
        );
        // The located error is the first in the file and leads, whatever the salvage order.
        assert_eq!(
            problems(
                "images:\n  - {source: x, tags: 3}\nregistries:\n  docker.io: {tls-verify: 3}\n"
            ),
            [
                "images[0].tags: invalid type: integer `3`, expected a sequence at line 2 column \
                 23",
                "registries.docker.io.tls-verify: invalid type: integer `3`, expected a boolean",
            ]
        );
        assert_eq!(
            problem("images:\n  - {source: alpine, all-tags: true, latest: three}\n"),
            "images[0].latest: invalid type: string \"three\", expected usize at line 2 column 46"
        );
        assert_eq!(
            problem(
                "registries:\n  docker.io:\n    tls-verify: maybe\nimages: [{source: a, all-tags: true}]\n"
            ),
            "registries.docker.io.tls-verify: invalid type: string \"maybe\", expected a boolean \
             at line 3 column 17"
        );
        assert_eq!(
            problem("image:\n  - source: alpine\n"),
            "unknown field `image`, expected one of `prefix`, `registries`, `images`, `to`, \
             `on-change`, `interval`, `cron`, `serve` at line 1 column 1"
        );
        assert_eq!(
            problem("images:\n  - target: x\n    all-tags: true\n"),
            "images[0]: missing field `source` at line 2 column 5"
        );
        assert_eq!(
            problem("images:\n  - source: a\n    all-tags: true\n    source: b\n"),
            "images[0]: key `source` appears twice in one mapping; keep one at line 2 column 5"
        );
        assert_eq!(
            problem("images: [\n"),
            "did not find expected node content at line 2 column 1, while parsing a flow node"
        );
        assert_eq!(
            problem("- a\n- b\n"),
            "the top level must be a mapping: `images:` (with optional `prefix:` and \
             `registries:`), or a skopeo sync file keyed by registry host"
        );
        assert_eq!(
            problem("docker.io:\n  images: {a: []}\nindex.docker.io:\n  images: {b: []}\n"),
            "index.docker.io: the same registry as docker.io (both are docker.io); merge the \
             two entries"
        );
        assert_eq!(
            problem("registry.example.com:\n  images:\n    a: []\n  imagez:\n    b: []\n"),
            "registry.example.com: unknown field `imagez`, expected one of `images`, \
             `images-by-tag-regex`, `images-by-semver`, `credentials`, `tls-verify`, \
             `cert-dir` at line 4 column 3"
        );
    }

    #[test]
    fn selection_errors() {
        let one = |image: &str| problem(&format!("images:\n  - {image}\n"));
        assert_eq!(
            one("{source: alpine, all-tags: true, semver: \">=1.2 <2\"}"),
            "images[0].semver: invalid semver range \">=1.2 <2\": expected comma after minor \
             version number, found '<'; write comma-separated comparators such as \">=1.2, <2\" \
             using = > >= < <= ~ ^ and wildcards like 1.2.* (`||` and hyphen ranges are not \
             supported)"
        );
        assert_eq!(
            one("{source: alpine, tags: [a], deny: ['3\\.(']}"),
            "images[0].deny[0]: invalid regular expression '3\\.(': unclosed group (Rust regex \
             syntax, close to Go's RE2)"
        );
        assert_eq!(
            one("{source: alpine, tags: [a], all-tags: true}"),
            "images[0]: `tags` and `all-tags: true` contradict each other; keep `tags` for a \
             fixed list, or `all-tags` (narrowed by allow/deny/semver/latest if needed)"
        );
        assert_eq!(
            one("{source: alpine, deny: [rc]}"),
            "images[0]: selects nothing from \"alpine\"; add `tags: [...]`, `all-tags: true`, \
             `allow: [...]`, `semver: \"...\"`, `latest: N` or `digests: [...]`"
        );
        assert_eq!(
            one("{source: alpine, all-tags: false}"),
            "images[0]: selects nothing from \"alpine\"; add `tags: [...]`, `all-tags: true`, \
             `allow: [...]`, `semver: \"...\"`, `latest: N` or `digests: [...]`"
        );
        assert_eq!(
            one("{source: alpine, latest: 0}"),
            "images[0].latest: 0 keeps no tag; give how many of the newest versions to keep, \
             or remove `latest`"
        );
        assert_eq!(
            one("{source: alpine, tags: []}"),
            "images[0].tags: an empty list selects no tag; list tags, or use `all-tags: true` \
             for every tag"
        );
        assert_eq!(
            one("{source: alpine, tags: [ok, 'bad tag']}"),
            "images[0].tags[1]: invalid tag \"bad tag\": a tag is 1-128 characters of \
             [A-Za-z0-9_.-] and must not start with '.' or '-'"
        );
        assert_eq!(
            one("{source: alpine, digests: ['sha256:abc']}"),
            "images[0].digests[0]: invalid digest \"sha256:abc\": a sha256 digest is exactly 64 \
             characters of [0-9a-f]"
        );
        assert_eq!(
            one("{source: alpine, tags: [a], platforms: [linux/aarch64]}"),
            "images[0].platforms[0]: invalid platform \"linux/aarch64\": unknown architecture \
             \"aarch64\" (did you mean arm64?); known: 386, amd64, arm, arm64, loong64, mips, \
             mips64, mips64le, mipsle, ppc64, ppc64le, riscv64, s390x, wasm"
        );
    }

    #[test]
    fn name_errors() {
        let one = |image: &str| problem(&format!("images:\n  - {image}\n"));
        assert_eq!(
            one("{source: Library/Alpine, tags: [a]}"),
            "images[0].source: invalid repository \"Library/Alpine\": repository names must be \
             lowercase"
        );
        assert_eq!(
            one("{source: alpine, target: ../x, tags: [a]}"),
            "images[0].target: invalid repository \"../x\": component \"..\" is not allowed; \
             each '/'-separated component is runs of [a-z0-9] joined by single '.', '_' or \
             '__', or by '-'s, with no leading or trailing separator"
        );
        assert_eq!(
            one("{source: 'alpine:3.20', tags: [a]}"),
            "images[0].source: \"alpine:3.20\" names a tag; give the repository only and list \
             the tag under `tags`"
        );
        assert_eq!(
            one(&format!("{{source: 'alpine@sha256:{H1}', tags: [a]}}")),
            format!(
                "images[0].source: \"alpine@sha256:{H1}\" names a digest; give the repository \
                 only and list the digest under `digests`"
            )
        );
        assert_eq!(
            problem("prefix: Mirror\nimages: [{source: alpine, tags: [a]}]\n"),
            "prefix: invalid repository \"Mirror\": repository names must be lowercase"
        );
        let long = "a".repeat(250);
        assert_eq!(
            problem(&format!(
                "prefix: {long}\nimages: [{{source: alpine, tags: [a]}}]\n"
            )),
            format!(
                "images[0].target: invalid repository \"{long}/library/alpine\": a repository \
                 name is at most 255 characters, got 265"
            )
        );
        assert_eq!(
            problem("registries:\n  myregistry: {}\nimages: [{source: alpine, tags: [a]}]\n"),
            "registries.myregistry: \"myregistry\" is not a registry host: a host contains a \
             '.' or a ':port', or is localhost (image names would read it as a Docker Hub \
             namespace)"
        );
        assert_eq!(
            problem("registries:\n  bad_host.io: {}\nimages: [{source: alpine, tags: [a]}]\n"),
            "registries.bad_host.io: invalid registry host \"bad_host.io\": a host is at most \
             255 characters of DNS labels ([A-Za-z0-9-], not starting or ending with '-') \
             joined by '.', or a bracketed IPv6 address, optionally followed by ':' and a port \
             of 1-5 digits (at most 65535)"
        );
        assert_eq!(
            problem(
                "registries:\n  docker.io: {}\n  index.docker.io: {}\nimages: [{source: alpine, \
                 tags: [a]}]\n"
            ),
            "registries.index.docker.io: the same registry as registries.docker.io (both are \
             docker.io); merge the two entries"
        );
    }

    #[test]
    fn duplicate_targets() {
        assert_eq!(
            problems(
                "images:\n  - {source: alpine, tags: [a]}\n  - {source: quay.io/library/alpine, \
                 tags: [a]}\n  - {source: ghcr.io/x/y, target: library/alpine, tags: [a]}\n"
            ),
            [
                "images[1]: stores quay.io/library/alpine as \"library/alpine\", which images[0] \
                 already uses for docker.io/library/alpine; two repositories cannot share a \
                 target: give one of them a different `target`",
                "images[2]: stores ghcr.io/x/y as \"library/alpine\", which images[0] already \
                 uses for docker.io/library/alpine; two repositories cannot share a target: \
                 give one of them a different `target`",
            ]
        );
        assert_eq!(
            problem(
                "images:\n  - {source: alpine, tags: [a]}\n  - {source: alpine, tags: [b], \
                 referrers: true}\n"
            ),
            "images[1]: mirrors docker.io/library/alpine into \"library/alpine\" like images[0] \
             but with different `platforms`, `referrers` or `verify`; merge the two entries"
        );
        // Same source, same options: the union of both selections.
        let c =
            ok("images:\n  - {source: alpine, tags: [a]}\n  - {source: alpine, allow: [b.*]}\n");
        assert_eq!(c.images.len(), 2);
        assert_eq!(
            problem(
                "docker.io:\n  images:\n    alpine: [a]\nquay.io:\n  images:\n    \
                 library/alpine: [a]\n"
            ),
            "quay.io.images.library/alpine: stores quay.io/library/alpine as \
             \"library/alpine\", which docker.io.images.alpine already uses for \
             docker.io/library/alpine; two repositories cannot share a target: skopeo sync \
             stores by repository path, so use our own format and rename one with `target`"
        );
    }

    #[test]
    fn credential_errors() {
        let reg = |body: &str| {
            problem(&format!(
                "registries:\n  docker.io: {body}\nimages: [{{source: alpine, tags: [a]}}]\n"
            ))
        };
        assert_eq!(
            reg("{credentials-env: NOPE}"),
            "registries.docker.io.credentials-env: $NOPE_USERNAME and $NOPE_PASSWORD are unset \
             or empty; export NOPE_USERNAME and NOPE_PASSWORD, or give `credentials`"
        );
        assert_eq!(
            reg("{credentials-env: HALF}"),
            "registries.docker.io.credentials-env: $HALF_PASSWORD is unset or empty; export \
             HALF_USERNAME and HALF_PASSWORD, or give `credentials`"
        );
        assert_eq!(
            reg("{credentials-env: EMPTY}"),
            "registries.docker.io.credentials-env: $EMPTY_USERNAME and $EMPTY_PASSWORD are \
             unset or empty; export EMPTY_USERNAME and EMPTY_PASSWORD, or give `credentials`"
        );
        assert_eq!(
            reg("{credentials-env: 1X}"),
            "registries.docker.io.credentials-env: \"1X\" is not an environment variable name \
             prefix; use letters, digits and '_', not starting with a digit"
        );
        assert_eq!(
            reg("{credentials-env: HUB, credentials: {username: a, password: b}}"),
            "registries.docker.io: `credentials` and `credentials-env` are both given; keep one"
        );
        assert_eq!(
            reg("{credentials: {username: a, password: ''}}"),
            "registries.docker.io.credentials.password: empty; give both username and \
             password, or remove `credentials` for anonymous access"
        );
        assert_eq!(
            reg("{cert-dir: ''}"),
            "registries.docker.io.cert-dir: empty; give the directory holding the registry's \
             CA certificates and client keys, or remove `cert-dir`"
        );
    }

    #[test]
    fn sync_targets_and_on_change_are_read_with_their_settings() {
        let c = ok(
            "images: [{source: a, tags: [\"1\"]}]\nto:\n  - store\n  - registry: reg.example:5000/mirror\n    tls-verify: false\n    credentials: {username: u, password: p}\n    overwrite: fail\non-change: [touch, /tmp/x]\n",
        );
        assert_eq!(c.to[0], SyncTarget::Store);
        let SyncTarget::Registry {
            target,
            settings,
            overwrite,
        } = &c.to[1]
        else {
            panic!("{:?}", c.to[1]);
        };
        assert_eq!(
            (target.host.as_str(), target.path.as_str()),
            ("reg.example:5000", "mirror")
        );
        assert!(!settings.tls_verify);
        assert_eq!(settings.credentials, Some(("u".into(), "p".into())));
        assert_eq!(*overwrite, Overwrite::Fail);
        assert_eq!(
            c.on_change,
            Some(OnChange::Command(vec!["touch".into(), "/tmp/x".into()]))
        );
        let nginx = ok(
            "images: [{source: a, tags: [\"1\"]}]\non-change: {reload-nginx: /etc/nginx/conf.d/r.conf, gen-conf-args: [--listen, \"8080\"]}\n",
        );
        assert_eq!(
            nginx.on_change,
            Some(OnChange::ReloadNginx {
                conf: "/etc/nginx/conf.d/r.conf".into(),
                args: vec!["--listen".into(), "8080".into()]
            })
        );
        // Neither given: the store, nothing to run; a skopeo sync file likewise.
        let plain = ok("images: [{source: a, tags: [\"1\"]}]\n");
        assert!(plain.to.is_empty() && plain.on_change.is_none());
    }

    /// A sync round's reload re-rendered nginx without the file's own mappings, so
    /// every mapped name vanished after the first change.
    #[test]
    fn reload_nginx_renders_the_serve_section_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror.yaml");
        let body = "images: [{source: a, tags: [\"1\"]}]\non-change: {reload-nginx: /etc/nginx/conf.d/r.conf}\nserve:\n  mappings: {lab: team}\n";
        std::fs::write(&path, body).unwrap();
        let c = load(&path).unwrap();
        assert_eq!(
            c.on_change,
            Some(OnChange::ReloadNginx {
                conf: "/etc/nginx/conf.d/r.conf".into(),
                args: vec!["--mappings".into(), path.to_string_lossy().into_owned()]
            })
        );
        std::fs::write(&path, body.replace("serve:\n  mappings: {lab: team}\n", "")).unwrap();
        let Some(OnChange::ReloadNginx { args, .. }) = load(&path).unwrap().on_change else {
            panic!()
        };
        assert!(args.is_empty());
    }

    #[test]
    fn sources_take_their_name_schedule_listing_and_targets_from_their_registry() {
        let c = ok(
            "interval: 15m\nprefix: m\nregistries:\n  docker.io: {name: hub, cron: \"0 */6 * * *\"}\n  reg.example:\n    images-from: [./list, --stable]\n    to: [{registry: t.example/x}]\nimages: [{source: a, tags: [\"1\"]}, {source: ghcr.io/o/r, tags: [\"2\"]}]\n",
        );
        let sources = c.sources();
        let by = |name: &str| sources.iter().find(|s| s.name == name).unwrap();
        assert_eq!(sources.len(), 3, "{sources:?}");
        assert_eq!(by("hub").registry, "docker.io");
        assert_eq!(by("hub").images.len(), 1);
        assert_eq!(
            by("hub").schedule,
            Some(Schedule::cron("0 */6 * * *").unwrap())
        );
        assert_eq!(by("hub").to, [SyncTarget::Store]);
        assert_eq!(
            by("ghcr.io").schedule,
            Some(Schedule::interval("15m").unwrap())
        );
        let listed = by("reg.example");
        assert!(listed.images.is_empty());
        assert_eq!(listed.images_from, ["./list", "--stable"]);
        assert!(matches!(&listed.to[..], [SyncTarget::Registry { .. }]));
        assert_eq!(c.prefix.as_deref(), Some("m"));
        assert_eq!(c.sync_only(), ["`to:` registries", "`images-from:`"]);
        // A source with only images-from is enough.
        ok("registries:\n  reg.example: {images-from: [./list]}\n");

        let p = problems(
            "interval: soon\nregistries:\n  docker.io: {name: \"a b\", interval: 1m, cron: \"* * * * *\"}\n  ghcr.io: {name: quay.io, images-from: []}\n  quay.io: {cron: \"61 * * * *\"}\nimages: [{source: a, tags: [\"1\"]}, {source: ghcr.io/o/r, tags: [\"1\"]}, {source: quay.io/o/q, tags: [\"1\"]}]\n",
        );
        let expected = [
            "registries.docker.io.name: \"a b\" is not a source name",
            "registries.docker.io.interval and registries.docker.io.cron are both given",
            "registries.ghcr.io.images-from: the command is empty",
            "registries.quay.io.cron: \"61 * * * *\" is not a cron pattern",
            "interval: \"soon\" is not a duration",
            "registries.quay.io.name: \"quay.io\" is also the name of the source ghcr.io",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expected) {
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
    }

    #[test]
    fn skopeo_errors() {
        let p = problems(&format!(
            "docker.io:\n  images:\n    alpine: ['bad tag', 'sha256:{}']\n  \
             images-by-tag-regex:\n    nginx: '('\n  images-by-semver:\n    redis: '>=1 || <1'\n\
             myregistry:\n  images:\n    x: []\n",
            &H1[1..]
        ));
        assert_eq!(
            p,
            [
                "docker.io.images.alpine[0]: invalid tag \"bad tag\": a tag is 1-128 characters \
                 of [A-Za-z0-9_.-] and must not start with '.' or '-'",
                format!(
                    "docker.io.images.alpine[1]: invalid digest \"sha256:{}\": a sha256 digest \
                     is exactly 64 characters of [0-9a-f]",
                    &H1[1..]
                )
                .as_str(),
                "docker.io.images-by-tag-regex.nginx: invalid regular expression '(': unclosed \
                 group (Rust regex syntax, close to Go's RE2)",
                "docker.io.images-by-semver.redis: invalid semver range \">=1 || <1\": expected \
                 comma after major version number, found '|'; write comma-separated comparators \
                 such as \">=1.2, <2\" using = > >= < <= ~ ^ and wildcards like 1.2.* (`||` and \
                 hyphen ranges are not supported)",
                "myregistry: \"myregistry\" is not a registry host: a host contains a '.' or a \
                 ':port', or is localhost (image names would read it as a Docker Hub namespace)",
            ]
        );
        assert_eq!(
            problem("quay.io:\n  tls-verify: false\n"),
            "no images listed; add `images:`, `images-by-tag-regex:` or `images-by-semver:` \
             under a registry"
        );
        assert_eq!(
            problem("docker.io:\n  images:\n    'alpine:3.20': []\n"),
            "docker.io.images.alpine:3.20: \"docker.io/alpine:3.20\" names a tag; give the \
             repository only and list the tag in the repository's list"
        );
    }
}
