//! What each server (the default one and every virtual host) serves under which name: the
//! store's repositories (under `--name-prefix`), stored names re-mapped without copies,
//! live upstream mounts, and the mirror-mode names clients ask for with `?ns=<host>`.
//!
//! Everything here is computed at gen-conf time into exact map keys, so a request still
//! costs one hash lookup; only upstream mounts are regexes, few and ordered longest first.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::mapping::{Mapping, Mappings, Mode, Target, Upstream, below};

/// nginx reads one configuration token into a 4 KiB buffer ("too long parameter"): a
/// catalog is rendered as map values of at most this many bytes, joined per request.
const CHUNK: usize = 3000;

#[derive(Debug, Serialize)]
pub struct Site {
    pub id: usize,
    /// `None`: the default server (its server_name comes from --server-name).
    pub host: Option<String>,
    /// The proxied upstream that `/` maps to: the site mirrors it, and `/v2/` relays its
    /// answer (with the challenge clients that ask `/v2/` first learn to log in from).
    pub root_upstream: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

/// One upstream registry (all mounts that reach it share it).
#[derive(Debug, Serialize)]
pub struct UpstreamCtx {
    pub id: usize,
    pub proxy: bool,
    /// `https://host:port` (redirect targets).
    pub origin: String,
    /// `host:port` for nginx's `upstream` block.
    pub address: String,
    pub scheme: &'static str,
    /// Host header.
    pub host: String,
    /// TLS SNI name.
    pub sni: String,
    /// Authorization sent upstream; empty: the client's own.
    pub authorization: String,
}

/// One mount: a regex over "<site> <served name>" that yields the upstream and the remote
/// repository name.
#[derive(Debug, Serialize)]
pub struct Mount {
    pub regex: String,
    pub upstream: usize,
    pub remote: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Routes {
    /// "<site> <served name>" -> stored name.
    pub names: Vec<Entry>,
    /// `ns` value -> the stored-name prefix it selects ("docker.io/").
    pub ns: Vec<Entry>,
    /// Catalog map i: site -> its i-th chunk of the catalog JSON.
    pub catalog: Vec<Vec<Entry>>,
    pub mounts: Vec<Mount>,
    pub upstreams: Vec<UpstreamCtx>,
    pub sites: Vec<Site>,
    pub any_proxy: bool,
    /// Some served name differs from its stored one: tag lists need the served name
    /// written in (a filter that costs a fifth of their requests/s, so only then).
    pub renamed: bool,
    /// Mappings that serve nothing, each with what to check.
    pub warnings: Vec<String>,
}

/// Compute every site's routes from the store's repositories.
pub fn routes(repos: &[String], prefix: &str, mappings: &Mappings) -> Routes {
    let mut r = Routes::default();
    let mut upstream_ids: BTreeMap<(String, bool, Option<String>, bool), usize> = BTreeMap::new();
    let stored: BTreeSet<&str> = repos.iter().map(String::as_str).collect();
    for (id, site) in mappings.sites.iter().enumerate() {
        r.sites.push(Site {
            id,
            host: site.host.clone(),
            root_upstream: None,
        });
        // served name -> stored name; the store's own names first: they always win.
        let mut served: BTreeMap<String, String> = repos
            .iter()
            .map(|n| (format!("{prefix}{n}"), n.clone()))
            .collect();
        for m in &site.mappings {
            let Target::Stored(target) = &m.target else {
                continue;
            };
            let mut any = false;
            for name in &stored {
                let Some(rest) = below(name, target) else {
                    continue;
                };
                let alias = match (&m.served, rest) {
                    (None, "") => continue,
                    (None, rest) => rest.to_owned(),
                    (Some(s), "") => s.clone(),
                    (Some(s), rest) => format!("{s}/{rest}"),
                };
                // A more specific mapping that covers the alias owns it.
                if owner(&site.mappings, &alias).is_some_and(|o| o.depth() > m.depth()) {
                    continue;
                }
                any = true;
                served.entry(alias).or_insert_with(|| (*name).to_owned());
            }
            if !any {
                r.warnings.push(format!(
                    "{}mapping {} -> {target}: the store holds no {target} nor anything under it, so it serves nothing",
                    site_label(site.host.as_deref()),
                    m.served.as_deref().unwrap_or("/"),
                ));
            }
        }
        r.renamed |= served.iter().any(|(name, stored)| name != stored);
        r.catalog_site(id, served.keys());
        r.names
            .extend(served.into_iter().map(|(name, store)| Entry {
                key: format!("{id} {name}"),
                value: store,
            }));
        let mut mounts: Vec<(&Mapping, &Upstream)> = site
            .mappings
            .iter()
            .filter_map(|m| match &m.target {
                Target::Upstream(u) => Some((m, u)),
                Target::Stored(_) => None,
            })
            .collect();
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.depth()));
        for (m, u) in mounts {
            let key = (
                u.origin(),
                u.mode == Mode::Proxy,
                u.authorization.clone(),
                u.tls,
            );
            let next = upstream_ids.len();
            let upstream = *upstream_ids.entry(key).or_insert_with(|| {
                r.upstreams.push(UpstreamCtx {
                    id: next,
                    proxy: u.mode == Mode::Proxy,
                    origin: u.origin(),
                    address: u.address(),
                    scheme: if u.tls { "https" } else { "http" },
                    host: u.host.clone(),
                    sni: u.server_name().to_owned(),
                    authorization: u.authorization.clone().unwrap_or_default(),
                });
                next
            });
            r.any_proxy |= u.mode == Mode::Proxy;
            if m.served.is_none() && u.mode == Mode::Proxy {
                r.sites[id].root_upstream = Some(upstream);
            }
            // Served names are validated: '.' is their only regex metacharacter.
            let (regex, remote) = match (&m.served, u.path.as_str()) {
                (None, "") => (format!("^{id} (.+)$"), "$1".to_owned()),
                (None, path) => (format!("^{id} (.+)$"), format!("{path}/$1")),
                (Some(s), "") => (
                    format!("^{id} {}/(.+)$", s.replace('.', "\\.")),
                    "$1".to_owned(),
                ),
                (Some(s), path) => (
                    format!("^{id} {}(/.+)?$", s.replace('.', "\\.")),
                    format!("{path}$1"),
                ),
            };
            r.mounts.push(Mount {
                regex,
                upstream,
                remote,
            });
        }
    }
    r.ns = ns_entries(repos, prefix);
    r.renamed |= !r.ns.is_empty();
    r
}

impl Routes {
    /// The site's catalog (served names, sorted) as JSON cut into chunks at name boundaries.
    fn catalog_site<'a>(&mut self, site: usize, names: impl Iterator<Item = &'a String>) {
        let mut chunks = vec![String::from("{\"repositories\":[")];
        for (i, name) in names.enumerate() {
            let item = format!("{}\"{name}\"", if i == 0 { "" } else { "," });
            if chunks.last().is_some_and(|c| c.len() + item.len() > CHUNK) {
                chunks.push(String::new());
            }
            chunks.last_mut().expect("one chunk").push_str(&item);
        }
        chunks.last_mut().expect("one chunk").push_str("]}");
        for (i, chunk) in chunks.into_iter().enumerate() {
            if self.catalog.len() <= i {
                self.catalog.push(Vec::new());
            }
            self.catalog[i].push(Entry {
                key: site.to_string(),
                value: chunk,
            });
        }
    }
}

fn site_label(host: Option<&str>) -> String {
    host.map(|h| format!("vhost {h}: ")).unwrap_or_default()
}

/// The mapping whose served path covers `name` most specifically.
fn owner<'a>(mappings: &'a [Mapping], name: &str) -> Option<&'a Mapping> {
    mappings
        .iter()
        .filter(|m| m.rest(name).is_some())
        .max_by_key(|m| m.depth())
}

/// Mirror mode: containerd and docker send `?ns=<host[:port]>` with the upstream a client
/// asked for; a store fetched with --keep-host holds that host's images under
/// `<host>/...` (a port as `-port`). Every first component of a stored name that can be a
/// host becomes an `ns` value.
fn ns_entries(repos: &[String], prefix: &str) -> Vec<Entry> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for name in repos {
        let Some((first, _)) = name.split_once('/') else {
            continue;
        };
        let value = format!("{prefix}{first}/");
        let (host, port) = match first.rsplit_once('-') {
            Some((h, p))
                if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (h, Some(p))
            }
            _ => (first, None),
        };
        if !(host.contains('.') || host == "localhost") {
            continue;
        }
        out.insert(first.to_owned(), value.clone());
        if let Some(port) = port {
            // containerd (Go's url.Values) sends the ':' percent-encoded; nginx compares
            // map keys ignoring case, so one spelling of %3A covers both.
            for colon in [":", "%3A"] {
                out.insert(format!("{host}{colon}{port}"), value.clone());
            }
        }
    }
    out.into_iter()
        .map(|(key, value)| Entry { key, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::parse;
    use std::path::Path;

    fn names(r: &Routes) -> Vec<(String, String)> {
        r.names
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn stored_mappings_alias_names_and_the_store_wins() {
        let repos: Vec<String> = ["lab/debian", "lab/tools/jq", "team/app", "x"]
            .map(String::from)
            .to_vec();
        let m = parse(
            r#"{"mappings": {"mirror": "lab", "mirror/tools": "team", "x": "team/app", "/": "lab"}}"#,
            "m",
            Path::new("."),
            None,
        )
        .unwrap();
        let r = routes(&repos, "", &m);
        let n = names(&r);
        let has = |k: &str, v: &str| n.contains(&(k.to_owned(), v.to_owned()));
        assert!(has("0 mirror/debian", "lab/debian"));
        // mirror/tools/... belongs to the more specific mapping, not to "mirror" -> lab.
        assert!(!n.iter().any(|(k, _)| k == "0 mirror/tools/jq"));
        assert!(has("0 mirror/tools/app", "team/app"));
        // The stored "x" wins over the mapping x -> team/app.
        assert!(has("0 x", "x"));
        assert!(has("0 debian", "lab/debian"));
        assert!(has("0 tools/jq", "lab/tools/jq"));
        assert_eq!(
            r.catalog[0][0].value,
            r#"{"repositories":["debian","lab/debian","lab/tools/jq","mirror/debian","mirror/tools/app","team/app","tools/jq","x"]}"#
        );
    }

    #[test]
    fn a_long_catalog_is_cut_into_chunks_nginx_can_read() {
        let repos: Vec<String> = (0..500).map(|i| format!("some/long/name-{i:04}")).collect();
        let r = routes(&repos, "", &Mappings::default());
        assert!(r.catalog.len() > 3);
        let joined: String = r.catalog.iter().map(|c| c[0].value.as_str()).collect();
        let v: serde_json::Value = serde_json::from_str(&joined).unwrap();
        assert_eq!(v["repositories"].as_array().unwrap().len(), 500);
        assert!(r.catalog.iter().all(|c| c[0].value.len() <= CHUNK));
    }

    #[test]
    fn keep_host_names_answer_their_ns() {
        let repos: Vec<String> = [
            "docker.io/library/alpine",
            "127.0.0.1-5000/lab/x",
            "localhost/a",
            "lab/y",
            "single",
        ]
        .map(String::from)
        .to_vec();
        let ns: Vec<(String, String)> = ns_entries(&repos, "")
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            ns,
            [
                ("127.0.0.1%3A5000", "127.0.0.1-5000/"),
                ("127.0.0.1-5000", "127.0.0.1-5000/"),
                ("127.0.0.1:5000", "127.0.0.1-5000/"),
                ("docker.io", "docker.io/"),
                ("localhost", "localhost/"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn mounts_are_tried_longest_first_and_share_upstreams() {
        let m = parse(
            r#"{"mappings": {"cool": "q.io/a", "cool/stuff": "q.io/b", "/": "http://r.lan:5000"}}"#,
            "m",
            Path::new("."),
            None,
        )
        .unwrap();
        let r = routes(&[], "", &m);
        let regexes: Vec<&str> = r.mounts.iter().map(|m| m.regex.as_str()).collect();
        assert_eq!(
            regexes,
            ["^0 cool/stuff(/.+)?$", "^0 cool(/.+)?$", "^0 (.+)$"]
        );
        assert_eq!(r.upstreams.len(), 2);
        assert_eq!(r.mounts[2].remote, "$1");
        assert_eq!(r.upstreams[1].origin, "http://r.lan:5000");
    }
}
