//! Read-only pull auth: HTTP Basic against an htpasswd file of bcrypt entries
//! (`htpasswd -B`), the one format that both nginx (through the system's crypt) and
//! `serve` check. gen-conf checks the file with [`Htpasswd::load`]; `serve` checks
//! requests against it. A bcrypt check costs milliseconds by design, and a pull is dozens of
//! requests: credentials that verified once are remembered (by their SHA-256) until the
//! file changes, so each is checked once, not per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest as _, Sha256};

/// How many verified credentials are remembered (then the memory starts again).
const REMEMBERED: usize = 4096;
/// How often the file is looked at for changes.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the htpasswd file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}; create entries with `htpasswd -B {path} USER` (bcrypt)")]
    Entry {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("{0} holds no user: nobody could pull; add one with `htpasswd -B {0} USER`")]
    Empty(PathBuf),
    /// Refusals of one request (logged, never sent).
    #[error("no Basic credentials")]
    Anonymous,
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
}

/// The users of an htpasswd file, re-read when it changes.
pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<Users>,
}

struct Users {
    modified: Option<SystemTime>,
    checked: Instant,
    hashes: HashMap<String, String>,
    /// SHA-256 of an Authorization value that verified → its user.
    verified: HashMap<[u8; 32], String>,
}

impl Htpasswd {
    /// Read and check the file: every entry must be `user:<bcrypt hash>`.
    pub fn load(path: &Path) -> Result<Htpasswd, AuthError> {
        let (modified, hashes) = read(path)?;
        Ok(Htpasswd {
            path: path.to_path_buf(),
            state: Mutex::new(Users {
                modified,
                checked: Instant::now(),
                hashes,
                verified: HashMap::new(),
            }),
        })
    }

    /// The user whose credentials `headers` carry, or why there is none.
    pub async fn check(&self, headers: &HeaderMap) -> Result<String, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or(AuthError::Anonymous)?;
        let key: [u8; 32] = Sha256::digest(value.trim().as_bytes()).into();
        let hash = {
            let mut users = self.state.lock().expect("not poisoned");
            self.refresh(&mut users);
            if let Some(user) = users.verified.get(&key) {
                return Ok(user.clone());
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(AuthError::Anonymous)?;
            let (user, password) = decoded.split_once(':').ok_or(AuthError::Anonymous)?;
            let hash = users
                .hashes
                .get(user)
                .cloned()
                .ok_or_else(|| AuthError::UnknownUser(user.to_owned()))?;
            (user.to_owned(), password.to_owned(), hash)
        };
        let (user, password, hash) = hash;
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if !ok {
            return Err(AuthError::WrongPassword(user));
        }
        let mut users = self.state.lock().expect("not poisoned");
        if users.verified.len() >= REMEMBERED {
            users.verified.clear();
        }
        users.verified.insert(key, user.clone());
        Ok(user)
    }

    /// Re-read the file when it changed (looked at once a second); a file that became
    /// unreadable or invalid keeps the users last read, with an error logged.
    fn refresh(&self, users: &mut Users) {
        if users.checked.elapsed() < RECHECK {
            return;
        }
        users.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == users.modified {
            return;
        }
        match read(&self.path) {
            Ok((modified, hashes)) => {
                tracing::info!(path = %self.path.display(), users = hashes.len(), "htpasswd file re-read");
                users.modified = modified;
                users.hashes = hashes;
                users.verified.clear();
            }
            Err(e) => {
                tracing::error!("{e}; the users read before stay in force");
                users.modified = modified;
            }
        }
    }
}

type Entries = (Option<SystemTime>, HashMap<String, String>);

fn read(path: &Path) -> Result<Entries, AuthError> {
    let io = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(io)?;
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut hashes = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = |reason| AuthError::Entry {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| entry("not of the form user:hash"))?;
        if user.is_empty() {
            return Err(entry("empty user name"));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(entry(
                "not a bcrypt hash (MD5 $apr1$, SHA1 {SHA} and crypt entries are not accepted)",
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(entry("a malformed bcrypt hash"));
        }
        hashes.insert(user.to_owned(), hash.to_owned());
    }
    if hashes.is_empty() {
        return Err(AuthError::Empty(path.to_path_buf()));
    }
    Ok((Some(modified), hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn entries_other_than_bcrypt_are_refused_naming_the_line() {
        let md5 = file("# users\nalice:$apr1$abcdefgh$0123456789abcdefghijkl\n");
        let e = Htpasswd::load(md5.path()).err().unwrap().to_string();
        assert!(
            e.contains("line 2") && e.contains("not a bcrypt hash"),
            "{e}"
        );
        assert!(e.contains("htpasswd -B"), "{e}");
        let broken = file("bob:$2y$05$short\n");
        let e = Htpasswd::load(broken.path()).err().unwrap().to_string();
        assert!(e.contains("malformed bcrypt"), "{e}");
        let empty = file("# nobody yet\n");
        assert!(matches!(
            Htpasswd::load(empty.path()),
            Err(AuthError::Empty(_))
        ));
    }

    #[tokio::test]
    async fn verified_credentials_are_remembered_until_the_file_changes() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let f = file(&format!("carol:{hash}\n"));
        let users = Htpasswd::load(f.path()).unwrap();
        let mut headers = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("carol:pw");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(users.check(&headers).await.unwrap(), "carol");
        assert_eq!(users.state.lock().unwrap().verified.len(), 1);
        assert_eq!(users.check(&headers).await.unwrap(), "carol");
        let wrong = base64::engine::general_purpose::STANDARD.encode("carol:nope");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {wrong}").parse().unwrap(),
        );
        assert!(matches!(
            users.check(&headers).await,
            Err(AuthError::WrongPassword(_))
        ));
    }
}

/// Which repositories each user may pull: `user: [pattern, ...]` in a YAML file, where a
/// pattern is a repository name in which `*` stands for any part of one path component
/// and `**` for anything (`team/*`, `base/**`, `**`). A user the file does not list may
/// pull nothing. Patterns match the names clients pull (with `--name-prefix`).
#[derive(Debug, Clone)]
pub struct Access {
    /// user → its patterns as anchored regexes (the `regex` crate's and PCRE's syntax).
    pub users: std::collections::BTreeMap<String, Vec<String>>,
    compiled: Vec<(String, regex::Regex)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("reading the access file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {source}; expected a map of user names to lists of repository patterns, e.g. `alice: [\"team/*\", \"base/**\"]`"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: user {user:?}, pattern {pattern:?}: {reason}")]
    Pattern {
        path: PathBuf,
        user: String,
        pattern: String,
        reason: &'static str,
    },
}

impl Access {
    pub fn load(path: &Path) -> Result<Access, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let listed: std::collections::BTreeMap<String, Vec<String>> =
            serde_yaml_ng::from_str(&text).map_err(|source| AccessError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut users = std::collections::BTreeMap::new();
        let mut compiled = Vec::new();
        for (user, patterns) in listed {
            let fail = |pattern: &str, reason| AccessError::Pattern {
                path: path.to_path_buf(),
                user: user.clone(),
                pattern: pattern.to_owned(),
                reason,
            };
            // The user name lands in an nginx map key: the htpasswd grammar, no quotes.
            if user.is_empty()
                || !user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
            {
                return Err(fail("", "user names are letters, digits and . _ @ -"));
            }
            let mut regexes = Vec::new();
            for p in &patterns {
                let valid = !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-*".contains(&b)
                    })
                    && !p.contains("***");
                if !valid {
                    return Err(fail(
                        p,
                        "patterns are repository names with * (one component) and ** (anything)",
                    ));
                }
                let body = p
                    .replace('.', "\\.")
                    .replace("**", "\u{0}")
                    .replace('*', "[^/]*")
                    .replace('\u{0}', ".*");
                regexes.push(format!("^{body}$"));
            }
            for r in &regexes {
                let re = regex::Regex::new(r).expect("built from a checked pattern");
                compiled.push((user.clone(), re));
            }
            users.insert(user, regexes);
        }
        Ok(Access { users, compiled })
    }

    /// Whether `user` may pull repository `name` (as served).
    pub fn allows(&self, user: &str, name: &str) -> bool {
        self.compiled
            .iter()
            .any(|(u, re)| u == user && re.is_match(name))
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn patterns_match_whole_components_and_unlisted_users_get_nothing() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "alice: [\"team/*\", \"base/**\"]\nci: [\"**\"]\n").unwrap();
        let a = Access::load(f.path()).unwrap();
        assert!(a.allows("alice", "team/app"));
        assert!(!a.allows("alice", "team/app/sub"));
        assert!(!a.allows("alice", "teams/app"));
        assert!(a.allows("alice", "base/x/y"));
        assert!(a.allows("ci", "anything/at/all"));
        assert!(!a.allows("bob", "team/app"));
        std::fs::write(f.path(), "alice: [\"team/[a-z]\"]\n").unwrap();
        let e = Access::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("\"team/[a-z]\""), "{e}");
        std::fs::write(f.path(), "\"al ice\": [\"x\"]\n").unwrap();
        assert!(Access::load(f.path()).is_err());
    }
}
