//! Authentication pieces that do not speak HTTP themselves: `WWW-Authenticate`
//! parsing, credential lookup in auth files, and the bearer-token cache.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use super::error::RegistryError;

// ---------------------------------------------------------------------------
// WWW-Authenticate

/// One challenge of a `WWW-Authenticate` header: scheme (lower-cased) and its
/// auth-params (names lower-cased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1). A header may carry
/// several challenges separated by commas, and quoted values may contain commas
/// and `\`-escapes, so a plain split on ',' would be wrong.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_ws = |c: u8| c == b' ' || c == b'\t';
    let skip = |i: &mut usize, also_commas: bool| {
        while *i < s.len() && (is_ws(s[*i]) || (also_commas && s[*i] == b',')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !is_ws(s[*i]) && s[*i] != b',' && s[*i] != b'=' {
            *i += 1;
        }
        &header[start..*i]
    };
    loop {
        skip(&mut i, true);
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // Stray '=' or end of input: nothing more we can make sense of.
            break;
        }
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            skip(&mut i, true);
            let before = i;
            let name = token(&mut i);
            skip(&mut i, false);
            if name.is_empty() || i >= s.len() || s[i] != b'=' {
                // Not "name=": the start of the next challenge (or a token68,
                // which registries do not use and we ignore).
                i = before;
                break;
            }
            i += 1; // '='
            skip(&mut i, false);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters, not bytes.
                    let c = header[i..].chars().next().unwrap_or('\u{fffd}');
                    v.push(c);
                    i += c.len_utf8();
                }
                if i < s.len() {
                    i += 1; // closing quote; an unterminated value runs to the end
                }
                v
            } else {
                let start = i;
                while i < s.len() && s[i] != b',' && !is_ws(s[i]) {
                    i += 1;
                }
                header[start..i].to_string()
            };
            ch.params.push((name.to_ascii_lowercase(), value));
        }
        // Each round consumed a non-empty scheme token, so this terminates.
        out.push(ch);
    }
    out
}

/// The challenge we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Picks the challenge to answer: Bearer (token) when offered, else Basic.
/// A Bearer challenge without a realm is unusable and skipped.
pub(crate) fn select_scheme(challenges: &[Challenge]) -> Option<AuthScheme> {
    let bearer = challenges.iter().find_map(|c| {
        if c.scheme != "bearer" {
            return None;
        }
        let realm = c.param("realm").filter(|r| !r.is_empty())?;
        Some(AuthScheme::Bearer {
            realm: realm.to_string(),
            service: c.param("service").map(str::to_string),
        })
    });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(AuthScheme::Basic)
    })
}

// ---------------------------------------------------------------------------
// Credentials and auth files

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// OAuth2 refresh token stored by `docker login` for some registries (e.g. ACR).
    IdentityToken(String),
}

// Hand-written so secrets never end up in logs via `{:?}`.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

const DOCKER_HUB: &str = "docker.io";

/// Docker Hub has several names; auth files use any of them as key, while the
/// API host is registry-1.docker.io. Everything else is compared lower-cased.
pub(crate) fn canonical_host(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    match h.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => h,
    }
}

/// [`canonical_host`] for display: the name to give `docker login`.
pub(crate) fn canonical_host_str(host: &str) -> &str {
    if canonical_host(host) == DOCKER_HUB {
        DOCKER_HUB
    } else {
        host
    }
}

/// Splits an auth-file key into (canonical host, repository namespace).
/// Docker keys carry a scheme and possibly a legacy path ("https://index.docker.io/v1/"),
/// whose path is meaningless; containers auth.json keys may name a namespace
/// or repository ("quay.io/org/repo") that restricts the entry to it.
pub(crate) fn normalise_key(key: &str) -> (String, String) {
    let key = key.trim();
    let (rest, had_scheme) = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        Some(r) => (r, true),
        None => (key, false),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = if had_scheme {
        ""
    } else {
        path.trim_end_matches('/')
    };
    (canonical_host(host), path.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthEntry {
    host: String,
    namespace: String,
    credential: Option<Credential>,
}

/// A parsed docker `config.json` or containers `auth.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AuthFile {
    auths: Vec<AuthEntry>,
    creds_store: Option<String>,
    cred_helpers: Vec<(String, String)>,
}

/// What an auth file says about a (host, repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Credential(Credential),
    Helper(String),
}

fn lenient_b64() -> base64::engine::GeneralPurpose {
    // Some tools write `auth` without padding.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

pub(crate) fn parse_auth_file(path: &Path, bytes: &[u8]) -> Result<AuthFile, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        auths: HashMap<String, RawEntry>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
        #[serde(default, rename = "credHelpers")]
        cred_helpers: HashMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct RawEntry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        identitytoken: Option<String>,
    }
    let bad = |cause: String| RegistryError::File {
        what: "malformed auth file",
        path: path.to_path_buf(),
        cause,
    };
    // An empty file is what some tools leave behind after logout; treat as no entries.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(AuthFile::default());
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let mut auths = Vec::new();
    for (key, e) in raw.auths {
        let (host, namespace) = normalise_key(&key);
        let credential = if let Some(tok) = e.identitytoken.filter(|t| !t.is_empty()) {
            Some(Credential::IdentityToken(tok))
        } else if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
            let decoded = lenient_b64()
                .decode(auth.trim())
                .map_err(|err| bad(format!("entry {key:?}: `auth` is not base64: {err}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("entry {key:?}: `auth` is not UTF-8")))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("entry {key:?}: `auth` is not \"user:password\"")))?;
            Some(Credential::Basic {
                username: u.to_string(),
                password: p.to_string(),
            })
        } else {
            match (e.username, e.password) {
                (Some(u), Some(p)) if !u.is_empty() => Some(Credential::Basic {
                    username: u,
                    password: p,
                }),
                // `{}` entries are markers docker writes when a credsStore holds the secret.
                _ => None,
            }
        };
        auths.push(AuthEntry {
            host,
            namespace,
            credential,
        });
    }
    let cred_helpers = raw
        .cred_helpers
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(k, h)| (normalise_key(&k).0, h))
        .collect();
    Ok(AuthFile {
        auths,
        creds_store: raw.creds_store.filter(|s| !s.is_empty()),
        cred_helpers,
    })
}

/// True if namespace `ns` ("" = whole registry) covers repository `repo`.
fn namespace_covers(ns: &str, repo: &str) -> bool {
    ns.is_empty()
        || repo == ns
        || (repo.starts_with(ns) && repo.as_bytes().get(ns.len()) == Some(&b'/'))
}

impl AuthFile {
    /// Precedence follows docker: a per-registry helper, then a stored
    /// credential (most specific namespace first, as containers does), then the
    /// default credsStore.
    pub fn lookup(&self, host: &str, repo: &str) -> Option<Found> {
        let host = canonical_host(host);
        if let Some((_, helper)) = self.cred_helpers.iter().find(|(h, _)| *h == host) {
            return Some(Found::Helper(helper.clone()));
        }
        let best = self
            .auths
            .iter()
            .filter(|e| e.host == host && e.credential.is_some())
            .filter(|e| namespace_covers(&e.namespace, repo))
            .max_by_key(|e| e.namespace.len());
        if let Some(e) = best {
            return e.credential.clone().map(Found::Credential);
        }
        self.creds_store.clone().map(Found::Helper)
    }
}

/// Auth files to consult, in order, after `--creds`: `--authfile`,
/// `$REGISTRY_AUTH_FILE`, podman's runtime file, the persistent containers
/// file, then docker's config. `env` is injected for tests.
pub(crate) fn candidate_files(
    authfile: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<PathBuf> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = nonempty("HOME");
    let mut out: Vec<PathBuf> = Vec::new();
    out.extend(authfile.map(Path::to_path_buf));
    out.extend(nonempty("REGISTRY_AUTH_FILE"));
    out.extend(nonempty("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    // podman falls back to this when there is no runtime dir, and users copy
    // auth.json here to keep it across reboots.
    out.extend(
        nonempty("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json")),
    );
    out.extend(
        nonempty("DOCKER_CONFIG")
            .or_else(|| home.as_ref().map(|h| h.join(".docker")))
            .map(|d| d.join("config.json")),
    );
    let mut seen = Vec::new();
    out.retain(|p| {
        let fresh = !seen.contains(p);
        seen.push(p.clone());
        fresh
    });
    out
}

/// The address docker passes to credential helpers: what `docker login` stored.
fn helper_server_address(host: &str) -> String {
    if canonical_host(host) == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

/// Runs `docker-credential-<helper> get` through docker_credential. A helper
/// that has nothing for this host is not an error: we continue anonymously.
fn run_helper(helper: &str, host: &str) -> Result<Option<Credential>, RegistryError> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let server = helper_server_address(host);
    // docker_credential only exposes helpers through a config document; a
    // one-entry credHelpers map makes it run exactly this helper for this server.
    let doc = serde_json::json!({ "credHelpers": { server.as_str(): helper } }).to_string();
    match docker_credential::get_credential_from_reader(doc.as_bytes(), &server) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(t)) => Ok(Some(Credential::IdentityToken(t))),
        Err(E::HelperFailure { stdout, stderr, .. }) => {
            // "credentials not found in native keychain" and the like.
            tracing::debug!(
                helper,
                host,
                "credential helper has no credential: {} {}",
                stdout.trim(),
                stderr.trim()
            );
            Ok(None)
        }
        Err(E::HelperCommunicationError) => {
            tracing::warn!(
                "credential helper docker-credential-{helper} (configured for {host}) could not be run; continuing without credentials"
            );
            Ok(None)
        }
        Err(e) => Err(RegistryError::CredentialHelper {
            helper: helper.to_string(),
            registry: host.to_string(),
            cause: e.to_string(),
        }),
    }
}

/// Finds the credential for (host, repo): `creds` if given, else the first
/// auth file that has one. Blocking (reads files, may run a helper): call it
/// from `spawn_blocking`.
pub(crate) fn lookup_credentials(
    creds: Option<&(String, String)>,
    files: &[PathBuf],
    explicit_authfile: Option<&Path>,
    host: &str,
    repo: &str,
) -> Result<Option<Credential>, RegistryError> {
    if let Some((u, p)) = creds {
        return Ok(Some(Credential::Basic {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if Some(path.as_path()) == explicit_authfile {
                    // Likely a typo; not fatal since the registry may allow anonymous pulls.
                    tracing::warn!("auth file {} does not exist", path.display());
                }
                continue;
            }
            Err(e) => {
                return Err(RegistryError::File {
                    what: "cannot read auth file",
                    path: path.clone(),
                    cause: e.to_string(),
                });
            }
        };
        let file = parse_auth_file(path, &bytes)?;
        match file.lookup(host, repo) {
            Some(Found::Credential(c)) => {
                tracing::debug!(host, repo, file = %path.display(), "using stored credential");
                return Ok(Some(c));
            }
            Some(Found::Helper(h)) => {
                if let Some(c) = run_helper(&h, host)? {
                    tracing::debug!(host, repo, helper = %h, "using credential helper");
                    return Ok(Some(c));
                }
            }
            None => {}
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Token cache

#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub value: String,
    pub refresh_at: Instant,
}

impl CachedToken {
    /// Refresh somewhat before the server-side expiry so a token never dies
    /// between our check and the registry's.
    pub fn new(value: String, expires_in: Duration) -> Self {
        let margin = (expires_in / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        Self {
            value,
            refresh_at: Instant::now() + expires_in.saturating_sub(margin),
        }
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

pub(crate) type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// One async mutex per (host, scope): concurrent requests for the same scope
/// queue on it, so only the first fetches a token and the others reuse it.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: std::sync::Mutex<HashMap<(String, String), TokenSlot>>,
}

impl TokenCache {
    pub fn slot(&self, host: &str, scope: &str) -> TokenSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((host.to_string(), scope.to_string()))
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn challenge_docker_hub() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            p(&c[0]),
            vec![
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull"),
            ]
        );
        assert_eq!(
            select_scheme(&c),
            Some(AuthScheme::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
    }

    #[test]
    fn challenge_quoted_commas_spaces_case_and_escapes() {
        let h = r#"BEARER  Realm = "https://t.example/token?a=1,b=2" , Service=svc,scope="repository:a/b:pull,push" , error="insufficient_scope", note="say \"hi\"""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://t.example/token?a=1,b=2"));
        assert_eq!(c[0].param("service"), Some("svc"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        assert_eq!(c[0].param("note"), Some(r#"say "hi""#));
    }

    #[test]
    fn challenge_several_in_one_header() {
        let h = r#"Basic realm="Registry Realm", Bearer realm="https://a/t",service="s""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(p(&c[0]), vec![("realm", "Registry Realm")]);
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(p(&c[1]), vec![("realm", "https://a/t"), ("service", "s")]);
        // Bearer is preferred even when listed second.
        assert!(matches!(select_scheme(&c), Some(AuthScheme::Bearer { .. })));
    }

    #[test]
    fn challenge_basic_bare_and_odd_inputs() {
        let c = parse_challenges("Basic");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "basic");
        assert!(c[0].params.is_empty());
        assert_eq!(select_scheme(&c), Some(AuthScheme::Basic));

        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("  ,  ").is_empty());
        // Unterminated quote: take the rest rather than panic.
        let c = parse_challenges(r#"Bearer realm="https://x/t"#);
        assert_eq!(c[0].param("realm"), Some("https://x/t"));
        // Bearer without realm is unusable; falls back to nothing.
        assert_eq!(
            select_scheme(&parse_challenges(r#"Bearer service="x""#)),
            None
        );
        // Token68 forms do not derail parsing of a following challenge.
        let c = parse_challenges(r#"Negotiate abc==, Basic realm="r""#);
        assert_eq!(select_scheme(&c), Some(AuthScheme::Basic));
        // Non-ASCII inside quotes stays intact.
        let c = parse_challenges("Bearer realm=\"https://x/tökén\"");
        assert_eq!(c[0].param("realm"), Some("https://x/tökén"));
    }

    #[test]
    fn challenge_parser_never_panics_on_truncation() {
        let samples = [
            r#"Bearer realm="https://a/t\"x",service="s", Basic realm="ö""#,
            r#"Negotiate abc==, Bearer realm=x ,scope=" a , b ""#,
            "=,=\"\\",
        ];
        for s in samples {
            for (end, _) in s.char_indices() {
                let _ = parse_challenges(&s[..end]);
            }
        }
    }

    #[test]
    fn key_normalisation() {
        assert_eq!(
            normalise_key("https://index.docker.io/v1/"),
            ("docker.io".into(), "".into())
        );
        assert_eq!(normalise_key("docker.io"), ("docker.io".into(), "".into()));
        assert_eq!(
            normalise_key("registry-1.docker.io"),
            ("docker.io".into(), "".into())
        );
        assert_eq!(
            normalise_key("http://LocalHost:5000"),
            ("localhost:5000".into(), "".into())
        );
        assert_eq!(
            normalise_key("quay.io/org/repo/"),
            ("quay.io".into(), "org/repo".into())
        );
        assert_eq!(
            normalise_key("https://ghcr.io/v2/"),
            ("ghcr.io".into(), "".into())
        );
        assert_eq!(
            normalise_key("[::1]:5000"),
            ("[::1]:5000".into(), "".into())
        );
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Found {
        Found::Credential(Credential::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn docker_config_json() {
        let json = format!(
            r#"{{
              "auths": {{
                "https://index.docker.io/v1/": {{ "auth": "{}" }},
                "127.0.0.1:5000": {{ "auth": "{}" }},
                "https://myreg.example": {{ "username": "u3", "password": "p:3" }},
                "store.example": {{}}
              }},
              "credsStore": "desktop",
              "credHelpers": {{ "gcr.io": "gcloud", "https://helper.example": "" }},
              "HttpHeaders": {{ "X": "y" }}
            }}"#,
            b64("hubuser:hub:pass"),
            // Unpadded, as some tools write it.
            b64("local:pw").trim_end_matches('='),
        );
        let f = parse_auth_file(Path::new("/x/config.json"), json.as_bytes()).unwrap();
        // The caller passes registry-1.docker.io for Docker Hub.
        assert_eq!(
            f.lookup("registry-1.docker.io", "library/alpine"),
            Some(basic("hubuser", "hub:pass"))
        );
        assert_eq!(
            f.lookup("docker.io", "x/y"),
            Some(basic("hubuser", "hub:pass"))
        );
        assert_eq!(f.lookup("127.0.0.1:5000", "t"), Some(basic("local", "pw")));
        assert_eq!(f.lookup("MyReg.example", "a"), Some(basic("u3", "p:3")));
        assert_eq!(
            f.lookup("gcr.io", "p/i"),
            Some(Found::Helper("gcloud".into()))
        );
        // Empty marker entries and unknown hosts go to the default store.
        assert_eq!(
            f.lookup("store.example", "a"),
            Some(Found::Helper("desktop".into()))
        );
        assert_eq!(
            f.lookup("other.example", "a"),
            Some(Found::Helper("desktop".into()))
        );
        // An empty helper name is ignored.
        assert_eq!(
            f.lookup("helper.example", "a"),
            Some(Found::Helper("desktop".into()))
        );
    }

    #[test]
    fn podman_auth_json_namespaces() {
        let json = format!(
            r#"{{"auths": {{
                "quay.io": {{ "auth": "{}" }},
                "quay.io/org": {{ "auth": "{}" }},
                "quay.io/org/special": {{ "auth": "{}" }},
                "docker.io": {{ "auth": "{}" }},
                "acr.example": {{ "auth": "{}", "identitytoken": "refresh-tok" }}
            }}}}"#,
            b64("any:1"),
            b64("org:2"),
            b64("special:3"),
            b64("hub:4"),
            b64("00000000-0000-0000-0000-000000000000:"),
        );
        let f = parse_auth_file(
            Path::new("/run/user/1/containers/auth.json"),
            json.as_bytes(),
        )
        .unwrap();
        assert_eq!(f.lookup("quay.io", "other/x"), Some(basic("any", "1")));
        assert_eq!(f.lookup("quay.io", "org/x"), Some(basic("org", "2")));
        assert_eq!(
            f.lookup("quay.io", "org/special"),
            Some(basic("special", "3"))
        );
        assert_eq!(
            f.lookup("quay.io", "org/special/sub"),
            Some(basic("special", "3"))
        );
        // Prefix must end at a path boundary.
        assert_eq!(
            f.lookup("quay.io", "organisation/x"),
            Some(basic("any", "1"))
        );
        assert_eq!(
            f.lookup("registry-1.docker.io", "library/a"),
            Some(basic("hub", "4"))
        );
        assert_eq!(
            f.lookup("acr.example", "a"),
            Some(Found::Credential(Credential::IdentityToken(
                "refresh-tok".into()
            )))
        );
        assert_eq!(f.lookup("ghcr.io", "a"), None);
    }

    #[test]
    fn malformed_auth_files_name_the_file() {
        let path = Path::new("/home/u/.docker/config.json");
        let e = parse_auth_file(path, b"{ not json").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/home/u/.docker/config.json"), "{s}");
        assert!(s.contains("malformed auth file"), "{s}");
        let e = parse_auth_file(path, br#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e = parse_auth_file(
            path,
            format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nocolon")).as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("user:password"), "{e}");
        // Empty file: no entries, not an error.
        assert_eq!(parse_auth_file(path, b"\n").unwrap(), AuthFile::default());
    }

    #[test]
    fn candidate_file_order() {
        let env = |k: &str| -> Option<OsString> {
            match k {
                "HOME" => Some("/home/u".into()),
                "REGISTRY_AUTH_FILE" => Some("/etc/auth.json".into()),
                "XDG_RUNTIME_DIR" => Some("/run/user/1".into()),
                "DOCKER_CONFIG" => Some("/dc".into()),
                _ => None,
            }
        };
        let files = candidate_files(Some(Path::new("/etc/auth.json")), &env);
        assert_eq!(
            files,
            vec![
                PathBuf::from("/etc/auth.json"),
                PathBuf::from("/run/user/1/containers/auth.json"),
                PathBuf::from("/home/u/.config/containers/auth.json"),
                PathBuf::from("/dc/config.json"),
            ]
        );
        let env = |k: &str| -> Option<OsString> { (k == "HOME").then(|| "/h".into()) };
        assert_eq!(
            candidate_files(None, &env),
            vec![
                PathBuf::from("/h/.config/containers/auth.json"),
                PathBuf::from("/h/.docker/config.json"),
            ]
        );
    }

    #[test]
    fn lookup_order_first_hit_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        let missing = dir.path().join("missing.json");
        std::fs::write(
            &a,
            format!(
                r#"{{"auths":{{"one.example":{{"auth":"{}"}}}}}}"#,
                b64("a:1")
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            format!(
                r#"{{"auths":{{"one.example":{{"auth":"{}"}},"two.example":{{"auth":"{}"}}}}}}"#,
                b64("b:1"),
                b64("b:2")
            ),
        )
        .unwrap();
        let files = vec![missing.clone(), a.clone(), b.clone()];
        let get = |creds: Option<&(String, String)>, host: &str| {
            lookup_credentials(creds, &files, Some(&missing), host, "r").unwrap()
        };
        let basic = |u: &str, p: &str| {
            Some(Credential::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(get(None, "one.example"), basic("a", "1"));
        assert_eq!(get(None, "two.example"), basic("b", "2"));
        assert_eq!(get(None, "three.example"), None);
        let cli = ("cli".to_string(), "pw".to_string());
        assert_eq!(get(Some(&cli), "one.example"), basic("cli", "pw"));

        // A malformed file is an error naming it, not silently skipped.
        std::fs::write(&a, "{").unwrap();
        let e = lookup_credentials(None, &files, None, "one.example", "r").unwrap_err();
        assert!(e.to_string().contains("a.json"), "{e}");
    }

    #[test]
    fn credential_debug_hides_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!format!("{:?}", Credential::IdentityToken("secret".into())).contains("secret"));
    }

    #[test]
    fn token_refresh_margin() {
        let t = CachedToken::new("x".into(), Duration::from_secs(300));
        let left = t.refresh_at - Instant::now();
        assert!(left <= Duration::from_secs(270) && left > Duration::from_secs(260));
        assert!(t.is_fresh());
        let t = CachedToken::new("x".into(), Duration::from_secs(0));
        assert!(!t.is_fresh());
    }
}
