//! Errors of the registry client. Every variant names what was being talked to
//! (registry, repository, URL, file) and, where the operator can act, what to try.

use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;

/// One entry of an OCI distribution error body
/// (`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub code: String,
    pub message: String,
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Parses an OCI error body; `None` if the body is not one (HTML error pages,
/// empty HEAD bodies, ...). Only the first entry is kept: registries put the
/// relevant one first and more would clutter the message.
pub(crate) fn parse_oci_error(body: &[u8]) -> Option<OciError> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let first = body.errors.into_iter().next()?;
    if first.code.is_empty() && first.message.is_empty() {
        return None;
    }
    Some(OciError {
        code: first.code,
        message: first.message,
    })
}

/// " (CODE: message)" or "" — keeps the format strings below readable.
fn oci_suffix(oci: &Option<OciError>) -> String {
    match oci {
        Some(e) => format!(" ({e})"),
        None => String::new(),
    }
}

/// The name an operator passes to `docker login`/`podman login` for this host.
fn login_name(registry: &str) -> String {
    super::auth::canonical_host_str(registry).to_owned()
}

/// What the operator can do about an error. The library states facts; the caller, which
/// knows its own options (`--creds` when pulling, `--dest-creds` when pushing), phrases
/// the advice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Remedy {
    /// Pass credentials for `registry`, or log in to it (`login` is the name to give
    /// `docker login`).
    Credentials { registry: String, login: String },
    /// The credentials given for `registry` were refused: check them, or log in again.
    CredentialsRefused { registry: String, login: String },
    /// The credentials may not do this at `registry`.
    Permission { registry: String, login: String },
    /// TLS with `registry` failed: trust its CA, or (plain http) turn verification off.
    Tls { registry: String },
}

impl Remedy {
    /// The registry it concerns.
    pub fn registry(&self) -> &str {
        match self {
            Remedy::Credentials { registry, .. }
            | Remedy::CredentialsRefused { registry, .. }
            | Remedy::Permission { registry, .. }
            | Remedy::Tls { registry } => registry,
        }
    }
}

/// What to try for statuses that are not covered by a dedicated variant.
fn status_hint(status: u16) -> &'static str {
    match status {
        429 => {
            "; the registry is rate limiting: wait and retry, or authenticate (Docker Hub allows more pulls to logged-in users)"
        }
        500..=599 => "; the registry had a server-side problem: retry later",
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The client could not be built (TLS settings, certificates).
    #[error("invalid registry client configuration: {0}")]
    Config(String),

    /// A file the operator pointed us at (or a standard auth file) is unreadable or malformed.
    #[error("{what} {}: {cause}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },

    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),

    /// A host that cannot be put into a URL safely.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error(
        "authentication required for {repo} at {registry} ({url}){} (some registries also answer this way for repositories that do not exist)",
        oci_suffix(.oci)
    )]
    Unauthorized {
        registry: String,
        repo: String,
        url: String,
        oci: Option<OciError>,
    },

    #[error(
        "the credentials for {registry} were refused for {repo} ({url}){}",
        oci_suffix(.oci)
    )]
    CredentialsRejected {
        registry: String,
        repo: String,
        url: String,
        oci: Option<OciError>,
    },

    #[error("access denied to {repo} at {registry} ({url}){}", oci_suffix(.oci))]
    Denied {
        registry: String,
        repo: String,
        url: String,
        oci: Option<OciError>,
    },

    #[error(
        "not found: {url}{}: check the repository name and the tag or digest at {registry}",
        oci_suffix(.oci)
    )]
    NotFound {
        registry: String,
        repo: String,
        url: String,
        oci: Option<OciError>,
    },

    #[error("{url} answered HTTP {status}{}{}", oci_suffix(.oci), status_hint(*.status))]
    Status {
        url: String,
        status: u16,
        oci: Option<OciError>,
    },

    #[error("TLS handshake with {host} failed: {cause}")]
    Tls {
        host: String,
        url: String,
        cause: String,
    },

    #[error(
        "connection to {host} port {port} refused ({url}): check that the registry is running and listening there, and the port in the image reference"
    )]
    ConnectionRefused {
        host: String,
        port: u16,
        url: String,
    },

    #[error(
        "cannot connect to {host} port {port} ({url}): {cause}; check the host name, DNS, proxy settings (HTTPS_PROXY/NO_PROXY) and firewall"
    )]
    Connect {
        host: String,
        port: u16,
        url: String,
        cause: String,
    },

    #[error(
        "timed out talking to {url}: {cause}; no connection within 30 s, or no data for the stall timeout: the registry or network is overloaded or unreachable"
    )]
    Timeout { url: String, cause: String },

    #[error("redirect from {url} failed: {cause}")]
    Redirect { url: String, cause: String },

    #[error("HTTP request to {url} failed: {cause}")]
    Http { url: String, cause: String },

    /// The body broke off or stalled after the response headers arrived.
    #[error("reading the response body from {url} failed: {cause}")]
    Body { url: String, cause: String },

    #[error(
        "manifest at {url} is larger than the limit of {limit} bytes; this is not a normal image manifest (raise the limit only if you trust the registry)"
    )]
    ManifestTooLarge { url: String, limit: u64 },

    #[error("token service {realm} of {registry} failed: {reason}")]
    Token {
        registry: String,
        realm: String,
        reason: String,
    },

    #[error(
        "{registry} started an upload to {repo} at {location:?}, which is not a URL on {registry}; uploads elsewhere are not supported"
    )]
    UploadLocation {
        registry: String,
        repo: String,
        location: String,
    },

    #[error(
        "the registry sent a manifest for {reference} whose bytes hash to {actual}, not {expected} ({origin}); nothing was stored"
    )]
    ManifestDigest {
        reference: String,
        expected: String,
        actual: String,
        origin: &'static str,
    },

    #[error("the registry sent a manifest for {reference} that cannot be read")]
    Manifest {
        reference: String,
        #[source]
        source: crate::manifest::ManifestError,
    },

    #[error(
        "{registry} lost part of an upload to {repo}: it holds {kept} bytes, {sent} had been sent before the failed chunk"
    )]
    UploadLost {
        registry: String,
        repo: String,
        kept: u64,
        sent: u64,
    },

    #[error(
        "{registry} stored other bytes than were pushed to {repo}: it answered with digest {got}, the bytes hash to {expected}"
    )]
    PushedDigest {
        registry: String,
        repo: String,
        expected: String,
        got: String,
    },

    #[error(
        "credential helper docker-credential-{helper} for {registry} failed: {cause}; check `docker-credential-{helper} list` or remove credsStore/credHelpers from the auth file"
    )]
    CredentialHelper {
        helper: String,
        registry: String,
        cause: String,
    },
}

impl RegistryError {
    /// What the operator can do about it, where that is more than retrying.
    pub fn remedy(&self) -> Option<Remedy> {
        let login = |r: &str| (r.to_owned(), login_name(r));
        match self {
            Self::Unauthorized { registry, .. } => {
                let (registry, login) = login(registry);
                Some(Remedy::Credentials { registry, login })
            }
            Self::CredentialsRejected { registry, .. } => {
                let (registry, login) = login(registry);
                Some(Remedy::CredentialsRefused { registry, login })
            }
            Self::Denied { registry, .. } => {
                let (registry, login) = login(registry);
                Some(Remedy::Permission { registry, login })
            }
            // The registry as the caller names it: with the port the URL has.
            Self::Tls { host, url, .. } => Some(Remedy::Tls {
                registry: match url::Url::parse(url).ok().and_then(|u| u.port()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host.clone(),
                },
            }),
            _ => None,
        }
    }

    /// The OCI error code the registry sent (e.g. `MANIFEST_UNKNOWN`), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { oci, .. }
            | Self::CredentialsRejected { oci, .. }
            | Self::Denied { oci, .. }
            | Self::NotFound { oci, .. }
            | Self::Status { oci, .. } => oci.as_ref().map(|e| e.code.as_str()),
            _ => None,
        }
    }

    /// True for HTTP 404 or an OCI "unknown" code: the manifest, blob or
    /// repository does not exist. Note Docker Hub answers 401 (UNAUTHORIZED)
    /// for repositories that do not exist; that is *not* reported as not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
            || matches!(
                self.code(),
                Some("MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "NAME_UNKNOWN")
            )
    }

    /// The URL involved, if the error concerns one request.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { url, .. }
            | Self::CredentialsRejected { url, .. }
            | Self::Denied { url, .. }
            | Self::NotFound { url, .. }
            | Self::Status { url, .. }
            | Self::Tls { url, .. }
            | Self::ConnectionRefused { url, .. }
            | Self::Connect { url, .. }
            | Self::Timeout { url, .. }
            | Self::Redirect { url, .. }
            | Self::Http { url, .. }
            | Self::Body { url, .. }
            | Self::ManifestTooLarge { url, .. } => Some(url),
            Self::Token { realm, .. } => Some(realm),
            _ => None,
        }
    }

    /// Failures that may go away by themselves, so a retry is worth it.
    /// TLS errors are deterministic and not retried.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused { .. }
                | Self::Connect { .. }
                | Self::Timeout { .. }
                | Self::Http { .. }
                | Self::Body { .. }
        )
    }

    /// The request never got an HTTP answer because the connection (TCP or
    /// TLS) could not be set up: the trigger for the plain-http fallback.
    pub(crate) fn is_connection_level(&self) -> bool {
        matches!(
            self,
            Self::Tls { .. } | Self::ConnectionRefused { .. } | Self::Connect { .. }
        )
    }
}

/// The whole `source()` chain of an error as "a: b: c", skipping repeats;
/// reqwest's own message ("error sending request") alone says nothing useful.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Kinds of all io::Errors in the chain, including io::Errors wrapped inside
/// io::Errors (hyper-util wraps the TLS one that way, and io::Error::source
/// skips the wrapped error itself).
fn io_error_kinds(err: &(dyn std::error::Error + 'static)) -> Vec<std::io::ErrorKind> {
    let mut kinds = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let mut inner = e.downcast_ref::<std::io::Error>();
        while let Some(io) = inner {
            kinds.push(io.kind());
            inner = io
                .get_ref()
                .and_then(|i| (i as &(dyn std::error::Error + 'static)).downcast_ref());
        }
        cur = e.source();
    }
    kinds
}

/// Maps a reqwest transport error (no HTTP status) to a variant an operator can act on.
pub(crate) fn from_transport(err: reqwest::Error, url: &url::Url) -> RegistryError {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(0);
    let url_s = url.to_string();
    let kinds = io_error_kinds(&err);
    // reqwest's own top level only repeats the URL and hyper's "client error
    // (Connect)" says nothing; the operator needs the innermost causes.
    let cause = match err.source() {
        Some(src) => error_chain(src)
            .split(": ")
            .filter(|p| !p.starts_with("client error ("))
            .collect::<Vec<_>>()
            .join(": "),
        None => String::new(),
    };
    let cause = if cause.is_empty() {
        err.to_string()
    } else {
        cause
    };
    if err.is_redirect() {
        return RegistryError::Redirect { url: url_s, cause };
    }
    use std::io::ErrorKind;
    // tokio-rustls reports every TLS failure as an io::Error of kind
    // InvalidData: the only robust way to spot one without depending on rustls.
    if url.scheme() == "https" && kinds.contains(&ErrorKind::InvalidData) {
        return RegistryError::Tls {
            host,
            url: url_s,
            cause,
        };
    }
    if kinds.contains(&ErrorKind::ConnectionRefused) {
        RegistryError::ConnectionRefused {
            host,
            port,
            url: url_s,
        }
    } else if err.is_timeout() {
        RegistryError::Timeout { url: url_s, cause }
    } else if err.is_connect() {
        RegistryError::Connect {
            host,
            port,
            url: url_s,
            cause,
        }
    } else if err.is_body() || err.is_decode() {
        RegistryError::Body { url: url_s, cause }
    } else {
        RegistryError::Http { url: url_s, cause }
    }
}

/// Maps an error while reading a response body (after the headers arrived).
pub(crate) fn from_body_error(err: reqwest::Error, url: &str) -> RegistryError {
    let cause = error_chain(&err);
    if err.is_timeout() {
        RegistryError::Timeout {
            url: url.to_string(),
            cause,
        }
    } else {
        RegistryError::Body {
            url: url.to_string(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_error_body() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}},{"code":"OTHER"}]}"#;
        let e = parse_oci_error(body).unwrap();
        assert_eq!(e.code, "MANIFEST_UNKNOWN");
        assert_eq!(e.message, "manifest unknown");
        assert!(parse_oci_error(b"<html>nope</html>").is_none());
        assert!(parse_oci_error(b"").is_none());
        assert!(parse_oci_error(br#"{"errors":[]}"#).is_none());
    }

    #[test]
    fn messages_name_the_target_and_remedies_are_typed() {
        let e = RegistryError::Unauthorized {
            registry: "registry-1.docker.io".into(),
            repo: "library/alpine".into(),
            url: "https://registry-1.docker.io/v2/library/alpine/manifests/3".into(),
            oci: Some(OciError {
                code: "UNAUTHORIZED".into(),
                message: "authentication required".into(),
            }),
        };
        let s = e.to_string();
        assert!(s.contains("library/alpine"), "{s}");
        assert!(s.contains("registry-1.docker.io"), "{s}");
        // The advice is the caller's to phrase (its flags); the error says what applies.
        assert_eq!(
            e.remedy(),
            Some(Remedy::Credentials {
                registry: "registry-1.docker.io".into(),
                login: "docker.io".into()
            })
        );
        assert!(s.contains("UNAUTHORIZED: authentication required"), "{s}");
        assert_eq!(e.code(), Some("UNAUTHORIZED"));
        assert!(!e.is_not_found());

        let e = RegistryError::Tls {
            host: "r.example".into(),
            url: "https://r.example/v2/".into(),
            cause: "invalid peer certificate: UnknownIssuer".into(),
        };
        let s = e.to_string();
        assert!(s.starts_with("TLS handshake with r.example failed: invalid peer"));
        assert!(matches!(e.remedy(), Some(Remedy::Tls { .. })), "{s}");

        let e = RegistryError::ConnectionRefused {
            host: "127.0.0.1".into(),
            port: 5000,
            url: "https://127.0.0.1:5000/v2/".into(),
        };
        assert!(e.to_string().contains("127.0.0.1 port 5000 refused"));
    }

    #[test]
    fn not_found_by_status_or_code() {
        let e = RegistryError::NotFound {
            registry: "r".into(),
            repo: "a".into(),
            url: "u".into(),
            oci: None,
        };
        assert!(e.is_not_found());
        assert_eq!(e.code(), None);
        let e = RegistryError::Status {
            url: "u".into(),
            status: 400,
            oci: Some(OciError {
                code: "NAME_UNKNOWN".into(),
                message: String::new(),
            }),
        };
        assert!(e.is_not_found());
        assert!(e.to_string().contains("HTTP 400 (NAME_UNKNOWN)"));
        let e = RegistryError::Status {
            url: "u".into(),
            status: 429,
            oci: None,
        };
        assert!(e.to_string().contains("rate limiting"));
    }
}
