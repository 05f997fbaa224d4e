//! OCI/Docker image reference grammar: parsing, normalisation and strict validation.
//!
//! Every registry, repository, tag and digest that later becomes a filesystem path or
//! text in an nginx config passes through here, so anything outside the distribution
//! grammar (path traversal, quotes, braces, whitespace, control characters) is rejected.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Longest repository name (without host) the distribution spec allows.
const MAX_REPOSITORY_LEN: usize = 255;
/// Hosts become directory names, and no filesystem accepts longer components.
const MAX_HOST_LEN: usize = 255;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

// `[0-9]` rather than `\d`: the regex crate's `\d` is Unicode-aware.
static COMPONENT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\z").unwrap());
static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\z").unwrap());
static HOST_RE: LazyLock<Regex> = LazyLock::new(|| {
    let label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?";
    Regex::new(&format!(
        r"\A(?:{label}(?:\.{label})*|\[[0-9A-Fa-f:]+\])(?::([0-9]{{1,5}}))?\z"
    ))
    .unwrap()
});

/// The accepted digest algorithms; an enum (not `&'static str`) so serde's derive imposes no
/// `'static` bound on deserialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: &'static str },
    #[error(
        "invalid registry host {host:?}: a host is at most 255 characters of DNS labels \
         ([A-Za-z0-9-], not starting or ending with '-') joined by '.', or a bracketed IPv6 \
         address, optionally followed by ':' and a port of 1-5 digits (at most 65535)"
    )]
    InvalidHost { host: String },
    #[error("invalid repository {name:?}: repository names must be lowercase")]
    UppercaseRepository { name: String },
    #[error("invalid repository {name:?}: a repository name is at most 255 characters, got {len}")]
    RepositoryTooLong { name: String, len: usize },
    #[error(
        "invalid repository {name:?}: component {component:?} is not allowed; each '/'-separated \
         component is runs of [a-z0-9] joined by single '.', '_' or '__', or by '-'s, with no \
         leading or trailing separator"
    )]
    InvalidRepositoryComponent { name: String, component: String },
    #[error(
        "invalid tag {tag:?}: a tag is 1-128 characters of [A-Za-z0-9_.-] and must not start \
         with '.' or '-'"
    )]
    InvalidTag { tag: String },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        digest: String,
        reason: &'static str,
    },
    #[error(
        "unsupported digest algorithm {algorithm:?} in {digest:?}: only sha256 and sha512 are accepted"
    )]
    UnsupportedDigestAlgorithm { digest: String, algorithm: String },
}

/// A content digest "algorithm:encoded". Only sha256 (64 lowercase hex) and sha512 (128
/// lowercase hex) are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> &str {
        self.algorithm.as_str()
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn sha256_from_hex(hex: &str) -> Result<Digest, ReferenceError> {
        format!("sha256:{hex}").parse()
    }

    /// The sha256 digest of `bytes` (the sha2 crate uses SHA-NI where the CPU has it).
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::sha256_finish(sha2::Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything `hasher` was fed (bytes hashed as they stream by).
    pub fn sha256_finish(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        let hex = hex::encode(hasher.finalize());
        Digest::sha256_from_hex(&hex).expect("sha256 output is valid hex")
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(ReferenceError::InvalidDigest {
                digest: s.to_owned(),
                reason: "a digest is \"algorithm:hex\" with algorithm sha256 or sha512",
            });
        };
        let (alg, len, rule) = match algorithm {
            "sha256" => (
                Algorithm::Sha256,
                64,
                "a sha256 digest is exactly 64 characters of [0-9a-f]",
            ),
            "sha512" => (
                Algorithm::Sha512,
                128,
                "a sha512 digest is exactly 128 characters of [0-9a-f]",
            ),
            _ => {
                return Err(ReferenceError::UnsupportedDigestAlgorithm {
                    digest: s.to_owned(),
                    algorithm: algorithm.to_owned(),
                });
            }
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex.len() != len || !hex.bytes().all(lower_hex) {
            return Err(ReferenceError::InvalidDigest {
                digest: s.to_owned(),
                reason: rule,
            });
        }
        Ok(Digest {
            algorithm: alg,
            hex: hex.to_owned(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = ReferenceError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex)
    }
}

/// A parsed image reference, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `registry/repository`: where its images come from, without tag or digest.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
    /// Host[:port] to talk HTTP to: "registry-1.docker.io" for docker.io, else `registry`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What goes in /v2/<repo>/manifests/<here>: the digest if present, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // Only reachable for hand-built values; parsing always sets one of them.
            (None, None) => "latest".to_owned(),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ReferenceError::InvalidReference {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("a reference must not be empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("whitespace and control characters are not allowed"));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Err(bad(
                "an image reference has no URL scheme: drop the \"http://\" or \"https://\" \
                 (a plain-HTTP registry needs --tls-verify=false, or tls-verify: false in a config)",
            ));
        }

        // Digest first: it contains a ':' that must not be mistaken for a tag separator.
        let (rest, digest) = match s.rsplit_once('@') {
            Some((_, "")) => return Err(bad("'@' must be followed by a digest")),
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A ':' before the last '/' belongs to a host port, not a tag.
        let (rest, tag) = match rest.rsplit_once(':') {
            Some((_, "")) => return Err(bad("':' must be followed by a tag")),
            Some((name, t)) if !t.contains('/') => {
                validate_tag(t)?;
                (name, Some(t.to_owned()))
            }
            _ => (rest, None),
        };
        if rest.is_empty() {
            return Err(bad("the repository name is missing"));
        }

        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                validate_host(first)?;
                (normalise_host(first), path)
            }
            _ => (DOCKER_HUB.to_owned(), rest),
        };
        // Validate what the user wrote so errors quote it, then the final name for length.
        validate_repository(path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        validate_repository(&repository)?;

        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Lowercased (DNS is case-insensitive, and one registry must map to one directory), with
/// Docker Hub's aliases folded into "docker.io".
fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

pub fn validate_host(host: &str) -> Result<(), ReferenceError> {
    let ok = host.len() <= MAX_HOST_LEN
        && HOST_RE.captures(host).is_some_and(|c| {
            c.get(1)
                .is_none_or(|port| port.as_str().parse::<u16>().is_ok())
        });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidHost {
            host: host.to_owned(),
        })
    }
}

/// Checks a repository name (without host) against the distribution grammar.
pub fn validate_repository(name: &str) -> Result<(), ReferenceError> {
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(ReferenceError::RepositoryTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    // Checked before the components so `Foo/bar` gets the helpful message.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository {
            name: name.to_owned(),
        });
    }
    match name.split('/').find(|c| !COMPONENT_RE.is_match(c)) {
        None => Ok(()),
        Some(component) => Err(ReferenceError::InvalidRepositoryComponent {
            name: name.to_owned(),
            component: component.to_owned(),
        }),
    }
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    if TAG_RE.is_match(tag) {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const H512: &str = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                        47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    /// (input, registry, repository, tag, digest, Display)
    type Case<'a> = (
        String,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        String,
    );

    #[test]
    fn valid_references() {
        let d256 = format!("sha256:{H256}");
        let d512 = format!("sha512:{H512}");
        let long_tag = "t".repeat(128);
        let long_repo = format!("{}/b", "a".repeat(253));
        let (dh, d2, d5) = ("docker.io", d256.as_str(), d512.as_str());
        let lib = "library/alpine";
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("alpine".into(), dh, lib, Some("latest"), None, "docker.io/library/alpine:latest".into()),
            ("alpine:3.20".into(), dh, lib, Some("3.20"), None, "docker.io/library/alpine:3.20".into()),
            ("library/alpine:_x".into(), dh, lib, Some("_x"), None, "docker.io/library/alpine:_x".into()),
            ("docker.io/alpine".into(), dh, lib, Some("latest"), None, "docker.io/library/alpine:latest".into()),
            ("index.docker.io/library/alpine:edge".into(), dh, lib, Some("edge"), None,
             "docker.io/library/alpine:edge".into()),
            ("registry-1.docker.io/org/app:v1".into(), dh, "org/app", Some("v1"), None, "docker.io/org/app:v1".into()),
            ("org/app".into(), dh, "org/app", Some("latest"), None, "docker.io/org/app:latest".into()),
            ("GHCR.io/team/app:1.0.0".into(), "ghcr.io", "team/app", Some("1.0.0"), None,
             "ghcr.io/team/app:1.0.0".into()),
            ("127.0.0.1:5000/a/b/c:Tag_1".into(), "127.0.0.1:5000", "a/b/c", Some("Tag_1"), None,
             "127.0.0.1:5000/a/b/c:Tag_1".into()),
            ("localhost:5000/app".into(), "localhost:5000", "app", Some("latest"), None,
             "localhost:5000/app:latest".into()),
            ("localhost/app".into(), "localhost", "app", Some("latest"), None, "localhost/app:latest".into()),
            ("[::1]:5000/app:x".into(), "[::1]:5000", "app", Some("x"), None, "[::1]:5000/app:x".into()),
            (format!("reg.example.com/x:tag@{d2}"), "reg.example.com", "x", Some("tag"), Some(d2),
             format!("reg.example.com/x:tag@{d2}")),
            (format!("reg.example.com/x@{d2}"), "reg.example.com", "x", None, Some(d2),
             format!("reg.example.com/x@{d2}")),
            (format!("quay.io/a__b/c-d--e.f_g@{d5}"), "quay.io", "a__b/c-d--e.f_g", None, Some(d5),
             format!("quay.io/a__b/c-d--e.f_g@{d5}")),
            (format!("alpine:{long_tag}"), dh, lib, Some(&long_tag), None,
             format!("docker.io/library/alpine:{long_tag}")),
            (format!("ghcr.io/{long_repo}"), "ghcr.io", &long_repo, Some("latest"), None,
             format!("ghcr.io/{long_repo}:latest")),
        ];
        for (input, registry, repository, tag, digest, display) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(r.registry, registry, "{input:?}");
            assert_eq!(r.repository, repository, "{input:?}");
            assert_eq!(r.tag.as_deref(), tag, "{input:?}");
            assert_eq!(
                r.digest.as_ref().map(|d| d.to_string()).as_deref(),
                digest,
                "{input:?}"
            );
            assert_eq!(r.to_string(), display, "{input:?}");
            // The normalised form must parse back to itself.
            assert_eq!(display.parse::<Reference>().unwrap().to_string(), display);
        }
    }

    #[test]
    fn invalid_references() {
        let inject = "\";} location / { root /;";
        #[rustfmt::skip]
        let cases: Vec<String> = vec![
            "".into(), " alpine".into(), "alpine ".into(), "alp ine".into(), "alpine\n".into(),
            "alp\0ine".into(), "alpine\t:x".into(), "alpine:".into(), "alpine@".into(),
            "alpine:tag@".into(), ":tag".into(), format!("@sha256:{H256}"),
            "a/../b".into(), "./a".into(), "../a".into(), "a//b".into(), "/a".into(),
            "a/".into(), "ghcr.io/".into(), "ghcr.io/a/..".into(), "A/b".into(),
            "Foo/bar".into(), "ghcr.io/a/B".into(), "ghcr.io/a_-b".into(),
            "ghcr.io/a___b".into(), "ghcr.io/a.-b".into(), "ghcr.io/-a".into(),
            "ghcr.io/a{b}".into(), "ghcr.io/a\"b".into(), "ghcr.io/a;b".into(),
            "ghcr.io/é".into(), format!("alpine:{inject}"), "alpine:x;y".into(),
            format!("alpine:{}", "t".repeat(129)), "alpine:.x".into(), "alpine:-x".into(),
            format!("alpine@sha256:{}", H256.to_uppercase()),
            format!("alpine@sha256:{}", &H256[..63]), format!("alpine@sha256:{H256}0"),
            "alpine@md5:d41d8cd98f00b204e9800998ecf8427e".into(), "alpine@sha256".into(),
            format!("alpine@sha512:{H256}"), format!("ghcr.io/{}", "a".repeat(256)),
            "a".repeat(248), // becomes library/<248> = 256 chars
            "reg:abc/app".into(), "reg:/app".into(), "reg:123456/app".into(),
            "reg:99999/app".into(), "-bad.example/app".into(), "bad-.example/app".into(),
            "a..b/app".into(), "[zz]:5000/app".into(), "[::1/app".into(), "[::1]".into(),
            "exa_mple.com/app".into(),
        ];
        for input in cases {
            assert!(input.parse::<Reference>().is_err(), "accepted {input:?}");
        }
        assert!(validate_tag(inject).is_err());
        assert!(validate_tag("").is_err());
        assert!(validate_repository("").is_err());
        assert!(validate_repository("a/../b").is_err());
    }

    #[test]
    fn error_messages_name_input_and_rule() {
        let e = "Foo/bar".parse::<Reference>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid repository \"Foo/bar\": repository names must be lowercase"
        );
        assert_eq!(
            validate_tag("x y").unwrap_err().to_string(),
            "invalid tag \"x y\": a tag is 1-128 characters of [A-Za-z0-9_.-] and must not \
             start with '.' or '-'"
        );
        let e = "a/../b".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("\"a/../b\"") && e.contains("\"..\""), "{e}");
        let e = "x@md5:00".parse::<Reference>().unwrap_err().to_string();
        assert!(
            e.contains("\"md5\"") && e.contains("sha256 and sha512"),
            "{e}"
        );
        let e = "reg:abc/app".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("\"reg:abc\"") && e.contains("port"), "{e}");
    }

    #[test]
    fn api_host_and_manifest_reference() {
        let r: Reference = "alpine".parse().unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.manifest_reference(), "latest");
        let r: Reference = format!("ghcr.io/org/app:v1@sha256:{H256}").parse().unwrap();
        assert_eq!(r.api_host(), "ghcr.io");
        assert_eq!(r.manifest_reference(), format!("sha256:{H256}"));
        let r: Reference = "localhost:5000/app:v2".parse().unwrap();
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.manifest_reference(), "v2");
    }

    #[test]
    fn digest_parsing_and_serde() {
        let d = Digest::sha256_from_hex(H256).unwrap();
        assert_eq!((d.algorithm(), d.hex()), ("sha256", H256));
        assert_eq!(d, format!("sha256:{H256}").parse().unwrap());
        assert!(Digest::sha256_from_hex(&H256.to_uppercase()).is_err());
        assert!(Digest::sha256_from_hex(H512).is_err());
        let d512: Digest = format!("sha512:{H512}").parse().unwrap();
        assert_eq!(d512.algorithm(), "sha512");

        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{H256}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
        assert!(serde_json::from_str::<Digest>("\"md5:abc\"").is_err());
    }
}
