//! Sources created over the API (`PUT /v1/sources/{name}`): read exactly as the
//! configuration file is, and kept in a state file so that they survive a restart. The
//! file maps each name to the body it was created with; it is written atomically and
//! readable by the service's user only (bodies may hold credentials).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::config::{self, ConfigError, MirrorConfig, Source};

/// Keys a body may not use anywhere: each would make the service act on its own
/// environment or run a program for whoever holds the token.
const REFUSED: [(&str, &str); 3] = [
    (
        "credentials-env",
        "reads the service's environment; send `credentials`",
    ),
    (
        "images-from",
        "runs a program on the service's host; list `images`, or put the source in the configuration file",
    ),
    ("on-change", "is the configuration file's alone"),
];

/// A body as a one-source configuration: the source named `name`, and the configuration
/// it came from (for its clients and prefix). Every problem is listed, with its path in
/// the body.
pub fn parse(name: &str, body: &Value) -> Result<(Source, MirrorConfig), Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = config::valid_source_name(name) {
        problems.push(format!("name: {e}"));
    }
    if !body.is_object() {
        problems.push(
            "the body must be a configuration in JSON: `registries`, `images`, `to`, `interval` \
             or `cron`, `prefix`, as in the configuration file"
                .to_owned(),
        );
        return Err(problems);
    }
    refused(body, "", &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let text = serde_json::to_string(body).expect("a Value serialises");
    let config = match config::parse(&text, "body") {
        Ok(c) => c,
        Err(ConfigError::Invalid { problems, .. }) => return Err(problems),
        Err(e) => return Err(vec![e.to_string()]),
    };
    let mut sources = config.sources();
    if sources.len() != 1 {
        let hosts: Vec<&str> = sources.iter().map(|s| s.registry.as_str()).collect();
        return Err(vec![format!(
            "images: a source is the images of one registry, and these come from {}; create one source per registry",
            hosts.join(", ")
        )]);
    }
    let mut source = sources.pop().expect("one");
    if let Some(given) = config
        .sources
        .get(&source.registry)
        .and_then(|s| s.name.as_ref())
        && given != name
    {
        return Err(vec![format!(
            "registries.{}.name: {given:?} differs from the name in the path, {name:?}; leave it out",
            source.registry
        )]);
    }
    source.name = name.to_owned();
    Ok((source, config))
}

fn refused(v: &Value, path: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match REFUSED.iter().find(|(key, _)| key == k) {
                    Some((_, why)) => {
                        problems.push(format!("{here}: not accepted over the API: it {why}"))
                    }
                    None => refused(child, &here, problems),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refused(child, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// The bodies in the state file; none when it does not exist.
pub fn read(path: &Path) -> std::io::Result<BTreeMap<String, Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
            .map(|f| f.sources)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the state file with `sources`: a temporary file beside it, synced, renamed
/// over it, and the directory synced.
pub fn write(path: &Path, sources: &BTreeMap<String, Value>) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let bytes = serde_json::to_vec_pretty(&StateFile {
        sources: sources.clone(),
    })
    .expect("a Value serialises");
    let mut tmp = tempfile::Builder::new()
        .prefix(".sources-")
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    sources: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_is_read_as_the_file_is_and_makes_one_source() {
        let body = json!({
            "registries": {"reg.example:5000": {"tls-verify": false}},
            "images": [{"source": "reg.example:5000/a/b", "tags": ["1"]}],
            "interval": "10m",
        });
        let (source, config) = parse("proj", &body).unwrap();
        assert_eq!(source.name, "proj");
        assert_eq!(source.registry, "reg.example:5000");
        assert!(!config.registries["reg.example:5000"].tls_verify);

        let two = json!({"images": [{"source": "a.io/x", "tags": ["1"]}, {"source": "b.io/y", "tags": ["1"]}]});
        assert!(parse("p", &two).unwrap_err()[0].contains("a.io, b.io"));
        let bad = json!({
            "images": [{"source": "a.io/x", "tags": ["bad tag"]}],
            "registries": {"a.io": {"credentials-env": "HOME", "images-from": ["sh"]}},
        });
        let p = parse("no good", &bad).unwrap_err();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("name: "));
        assert!(p[1].starts_with("registries.a.io.credentials-env: not accepted"));
        assert!(p[2].starts_with("registries.a.io.images-from: not accepted"));
        let p = parse(
            "p",
            &json!({"images": [{"source": "a.io/x", "tags": ["bad tag"]}], "interval": "x"}),
        )
        .unwrap_err();
        assert!(
            p.iter().any(|p| p.starts_with("images[0].tags[0]")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.starts_with("interval")), "{p:?}");
    }

    #[test]
    fn the_state_file_round_trips_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sources.json");
        assert!(read(&path).unwrap().is_empty());
        let mut all = BTreeMap::new();
        all.insert("p".to_owned(), json!({"images": []}));
        write(&path, &all).unwrap();
        assert_eq!(read(&path).unwrap(), all);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
