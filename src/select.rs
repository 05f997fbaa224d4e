//! Which tags and platforms of a repository to mirror. Pure: callers supply the remote tag
//! list and the platforms found in an index; nothing here talks to a registry.

use std::fmt;
use std::str::FromStr;

use regex::Regex;
use semver::{Version, VersionReq};

use crate::manifest::{Platform, UPSTREAM_DIGEST};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "invalid regular expression '{pattern}': {reason} (Rust regex syntax, close to Go's RE2)"
    )]
    Regex { pattern: String, reason: String },
    #[error(
        "invalid semver range {input:?}: {reason}; write comma-separated comparators such as \
         \">=1.2, <2\" using = > >= < <= ~ ^ and wildcards like 1.2.* (`||` and hyphen ranges \
         are not supported)"
    )]
    SemverRange { input: String, reason: String },
    #[error(
        "invalid platform {input:?}: write os/architecture[/variant], e.g. linux/amd64, \
         linux/arm64 or linux/arm/v7"
    )]
    PlatformSyntax { input: String },
    #[error("invalid platform {input:?}: unknown os {os:?}{hint}; known: {}", KNOWN_OS.join(", "))]
    UnknownOs {
        input: String,
        os: String,
        hint: String,
    },
    #[error(
        "invalid platform {input:?}: unknown architecture {arch:?}{hint}; known: {}",
        KNOWN_ARCH.join(", ")
    )]
    UnknownArchitecture {
        input: String,
        arch: String,
        hint: String,
    },
    #[error("invalid platform {input:?}: unknown variant {variant:?} for {arch}; known: {known}")]
    UnknownVariant {
        input: String,
        arch: String,
        variant: String,
        known: String,
    },
}

/// How tags of one repository are chosen.
///
/// The filters combine as a pipeline:
/// 1. candidates are `tags` when given (an explicit list: no remote listing needed), else
///    every remote tag;
/// 2. when `allow` is non-empty, keep the tags matching at least one of its regexes;
/// 3. drop the tags matching any `deny` regex;
/// 4. when `semver` is set, keep the tags whose version ([`tag_version`]) is inside the range;
/// 5. when `latest` is set, keep the tags of the N highest versions.
///
/// Tags that are not versions (`latest`, `main`, `sha256-….sig`) never pass steps 4 and 5, so
/// setting `semver` or `latest` drops them. With no filter at all (the default) every
/// candidate is selected.
#[derive(Debug, Clone, Default)]
pub struct TagSelector {
    pub tags: Option<Vec<String>>,
    pub allow: Vec<Regex>,
    pub deny: Vec<Regex>,
    pub semver: Option<VersionReq>,
    pub latest: Option<usize>,
}

/// Regexes compare by their source text (the anchoring wrapper included): `Regex` has no
/// equality of its own, and identical text compiles to identical behaviour.
impl PartialEq for TagSelector {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &[Regex], b: &[Regex]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_str() == y.as_str())
        };
        self.tags == other.tags
            && same(&self.allow, &other.allow)
            && same(&self.deny, &other.deny)
            && self.semver == other.semver
            && self.latest == other.latest
    }
}

impl TagSelector {
    /// Whether the remote tag list is needed: true unless `tags` is an explicit list.
    pub fn needs_listing(&self) -> bool {
        self.tags.is_none()
    }

    /// Applies the pipeline to `remote` (ignored when `tags` is given). The result is
    /// deduplicated and sorted: by version, highest first, when `semver` or `latest` is set
    /// (equal versions such as `1.2` and `v1.2.0` by name), else by name.
    ///
    /// `latest: N` counts versions, not tags, so every tag of the N newest versions is kept.
    /// Pre-releases count as versions here (suffix flavours such as `1.25.3-alpine` parse as
    /// pre-releases); add a `semver` range or a `deny` pattern to leave them out.
    pub fn select(&self, remote: &[String]) -> Vec<String> {
        let candidates = self.tags.as_deref().unwrap_or(remote);
        let filtered = candidates.iter().filter(|tag| {
            (self.allow.is_empty() || self.allow.iter().any(|re| re.is_match(tag)))
                && !self.deny.iter().any(|re| re.is_match(tag))
        });

        if self.semver.is_none() && self.latest.is_none() {
            let mut tags: Vec<String> = filtered.cloned().collect();
            tags.sort();
            tags.dedup();
            return tags;
        }

        let mut versioned: Vec<(Version, &String)> = filtered
            .filter_map(|tag| tag_version(tag).map(|v| (v, tag)))
            .filter(|(v, _)| self.semver.as_ref().is_none_or(|req| req.matches(v)))
            .collect();
        versioned.sort_by(|(va, ta), (vb, tb)| vb.cmp(va).then_with(|| ta.cmp(tb)));
        versioned.dedup_by(|a, b| a.1 == b.1);

        if let Some(n) = self.latest {
            let mut distinct = 0;
            let mut previous: Option<&Version> = None;
            let mut cut = versioned.len();
            for (i, (v, _)) in versioned.iter().enumerate() {
                if previous != Some(v) {
                    distinct += 1;
                    previous = Some(v);
                }
                if distinct > n {
                    cut = i;
                    break;
                }
            }
            versioned.truncate(cut);
        }
        versioned.into_iter().map(|(_, tag)| tag.clone()).collect()
    }
}

/// Reads a tag as a semantic version, leniently, as registries tag releases: an optional
/// leading `v`, and a missing minor or patch counts as 0 (`1` → 1.0.0, `v1.2` → 1.2.0);
/// pre-release and build parts are kept as semver defines them (`2.0.0-rc1`, `1.2-alpine`).
/// Anything else (`latest`, `main`, `sha256-….sig`, `1.02`, `1.2.3.4`) is `None`: such tags
/// are never selected by a `semver` range or by `latest`.
pub fn tag_version(tag: &str) -> Option<Version> {
    let tag = match tag.strip_prefix('v') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
        _ => tag,
    };
    let split = tag.find(['-', '+']).unwrap_or(tag.len());
    let (core, rest) = tag.split_at(split);
    let padding = match core.split('.').count() {
        1 => ".0.0",
        2 => ".0",
        _ => "",
    };
    Version::parse(&format!("{core}{padding}{rest}")).ok()
}

/// Parses a version range in Cargo's syntax (`">=1.2, <2"`, `"~3.19"`, `"1.2.*"`; a bare
/// version means `^`).
pub fn parse_semver_range(s: &str) -> Result<VersionReq, SelectError> {
    VersionReq::parse(s).map_err(|e| SelectError::SemverRange {
        input: s.to_owned(),
        reason: e.to_string(),
    })
}

/// Compiles a tag pattern. `anchored` patterns must match the whole tag (our own config
/// format: `allow: ['1\..*']` means tags starting with "1."); unanchored ones match anywhere
/// in the tag, as Go's `MatchString` does for skopeo's `images-by-tag-regex`.
pub fn compile_regex(s: &str, anchored: bool) -> Result<Regex, SelectError> {
    // A group, so alternations in `s` stay inside the anchors.
    let source = if anchored {
        format!("^(?:{s})$")
    } else {
        s.to_owned()
    };
    Regex::new(&source).map_err(|e| SelectError::Regex {
        pattern: s.to_owned(),
        reason: regex_reason(&e),
    })
}

/// One line out of regex's multi-line report, whose echo of the pattern would show our
/// anchoring wrapper rather than what the user wrote.
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(report) => report
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(report.trim())
            .to_owned(),
        other => other.to_string().replace('\n', " "),
    }
}

/// GOOS values: what image indexes use for `os`.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];

/// GOARCH values: what image indexes use for `architecture`.
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// Variants per architecture: the ARM ones from the OCI image spec, and the x86-64
/// microarchitecture levels that buildx publishes (linux/amd64/v2, …).
fn known_variants(arch: &str) -> &'static [&'static str] {
    match arch {
        "arm" => &["v5", "v6", "v7", "v8"],
        "arm64" => &["v8"],
        "amd64" => &["v1", "v2", "v3", "v4"],
        _ => &[],
    }
}

/// Names from `uname -m` and distributions that people write instead of GOOS/GOARCH.
fn alias_hint(name: &str) -> String {
    let canonical = match name {
        "aarch64" | "armv8" => "arm64",
        "x86_64" | "x86-64" | "x64" => "amd64",
        "i386" | "i686" | "x86" => "386",
        "armhf" | "armv7" | "armv7l" => "arm/v7",
        "armel" | "armv6" | "armv6l" => "arm/v6",
        "macos" | "osx" => "darwin",
        "win" => "windows",
        _ => return String::new(),
    };
    format!(" (did you mean {canonical}?)")
}

/// A platform to keep from multi-platform images, written "os/architecture[/variant]".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl FromStr for PlatformSpec {
    type Err = SelectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts[..] {
            [os, arch] => (os, arch, None),
            [os, arch, variant] => (os, arch, Some(variant)),
            _ => {
                return Err(SelectError::PlatformSyntax {
                    input: s.to_owned(),
                });
            }
        };
        if os.is_empty() || arch.is_empty() || variant == Some("") {
            return Err(SelectError::PlatformSyntax {
                input: s.to_owned(),
            });
        }
        if !KNOWN_OS.contains(&os) {
            return Err(SelectError::UnknownOs {
                input: s.to_owned(),
                os: os.to_owned(),
                hint: alias_hint(os),
            });
        }
        if !KNOWN_ARCH.contains(&arch) {
            return Err(SelectError::UnknownArchitecture {
                input: s.to_owned(),
                arch: arch.to_owned(),
                hint: alias_hint(arch),
            });
        }
        if let Some(variant) = variant {
            let known = known_variants(arch);
            if !known.contains(&variant) {
                return Err(SelectError::UnknownVariant {
                    input: s.to_owned(),
                    arch: arch.to_owned(),
                    variant: variant.to_owned(),
                    known: if known.is_empty() {
                        "none, this architecture has no variants".to_owned()
                    } else {
                        known.join(", ")
                    },
                });
            }
        }
        Ok(PlatformSpec {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    /// Whether an index entry's platform is this one, after normalising both sides as
    /// containerd does: arm64 means arm64/v8, arm means arm/v7, amd64 means amd64/v1, a bare
    /// digit variant gets its `v`, and `aarch64`/`x86_64` in manifests are arm64/amd64. No
    /// fallback across variants: linux/arm/v7 does not match an arm/v6 image.
    pub fn matches(&self, p: &Platform) -> bool {
        self.os.eq_ignore_ascii_case(&p.os)
            && normalise(&self.architecture, self.variant.as_deref())
                == normalise(&p.architecture, p.variant.as_deref())
    }

    /// Whether an index entry's platform is one of `wanted`.
    pub fn any_matches(wanted: &[PlatformSpec], p: &Platform) -> bool {
        wanted.iter().any(|w| w.matches(p))
    }
}

fn normalise(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let arch = match arch.as_str() {
        "aarch64" => "arm64".to_owned(),
        "x86_64" | "x86-64" => "amd64".to_owned(),
        _ => arch,
    };
    let variant = variant.map(|v| {
        let v = v.to_ascii_lowercase();
        if v.starts_with(|c: char| c.is_ascii_digit()) {
            format!("v{v}")
        } else {
            v
        }
    });
    let variant = match (arch.as_str(), variant) {
        ("arm64", None) => Some("v8".to_owned()),
        ("arm", None) => Some("v7".to_owned()),
        ("amd64", None) => Some("v1".to_owned()),
        (_, v) => v,
    };
    (arch, variant)
}

/// What a platform filter does to one index.
#[derive(Debug, PartialEq, Eq)]
pub enum PlatformCut {
    /// Every child is wanted: keep the upstream bytes (and digest).
    Whole,
    /// Some children dropped: this new index document replaces the upstream one.
    Cut {
        bytes: Vec<u8>,
        dropped: Vec<String>,
    },
    /// No child is wanted; the index offers these platforms.
    Nothing { available: Vec<String> },
}

/// Keep the children of an index (raw bytes) whose platform is one of `keep`, plus the
/// attestation manifests buildx attaches to a kept child. Kept entries are carried over
/// as they are (unknown fields and all); the cut index records `upstream` in its
/// annotations.
pub fn cut_index(
    bytes: &[u8],
    keep: &[PlatformSpec],
    upstream: &str,
) -> Result<PlatformCut, serde_json::Error> {
    use serde_json::Value;
    let mut doc: serde_json::Map<String, Value> = serde_json::from_slice(bytes)?;
    let children: Vec<Value> = match doc.remove("manifests") {
        Some(Value::Array(c)) => c,
        _ => return Ok(PlatformCut::Whole),
    };
    let platform = |c: &Value| serde_json::from_value::<Platform>(c.get("platform")?.clone()).ok();
    let annotation =
        |c: &Value, key: &str| c.get("annotations")?.get(key)?.as_str().map(str::to_owned);
    let wanted = |c: &Value| platform(c).is_some_and(|p| PlatformSpec::any_matches(keep, &p));
    let kept_digests: Vec<Value> = children
        .iter()
        .filter(|c| wanted(c))
        .filter_map(|c| c.get("digest").cloned())
        .collect();
    if kept_digests.is_empty() {
        let mut available: Vec<String> = children
            .iter()
            .filter_map(platform)
            .filter(|p| p.os != "unknown")
            .map(|p| describe(&p))
            .collect();
        available.dedup();
        return Ok(PlatformCut::Nothing { available });
    }
    let (kept, dropped): (Vec<Value>, Vec<Value>) = children.into_iter().partition(|c| {
        wanted(c)
            || (annotation(c, "vnd.docker.reference.type").as_deref()
                == Some("attestation-manifest")
                && annotation(c, "vnd.docker.reference.digest")
                    .is_some_and(|d| kept_digests.iter().any(|k| k.as_str() == Some(&d))))
    });
    if dropped.is_empty() {
        return Ok(PlatformCut::Whole);
    }
    doc.insert("manifests".into(), Value::Array(kept));
    let annotations = doc
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(a) = annotations {
        a.insert(UPSTREAM_DIGEST.into(), Value::String(upstream.to_owned()));
    }
    let mut dropped: Vec<String> = dropped
        .iter()
        .map(|c| platform(c).map_or_else(|| "no platform".to_owned(), |p| describe(&p)))
        .collect();
    dropped.dedup();
    Ok(PlatformCut::Cut {
        bytes: serde_json::to_vec(&Value::Object(doc)).expect("JSON values serialise"),
        dropped,
    })
}

fn describe(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Vec<String> {
        [
            "1.0",
            "1.2.3",
            "v1.3.0",
            "2.0.0-rc1",
            "2.0.0",
            "latest",
            "main",
            "sha256-abc.sig",
        ]
        .map(String::from)
        .to_vec()
    }

    fn re(s: &str) -> Regex {
        compile_regex(s, true).unwrap()
    }

    #[test]
    fn tag_versions_are_lenient_but_not_loose() {
        let v = |s: &str| tag_version(s).map(|v| v.to_string());
        assert_eq!(v("1").as_deref(), Some("1.0.0"));
        assert_eq!(v("1.0").as_deref(), Some("1.0.0"));
        assert_eq!(v("v1.3.0").as_deref(), Some("1.3.0"));
        assert_eq!(v("v2").as_deref(), Some("2.0.0"));
        assert_eq!(v("2.0.0-rc1").as_deref(), Some("2.0.0-rc1"));
        assert_eq!(v("1.25-alpine").as_deref(), Some("1.25.0-alpine"));
        assert_eq!(v("1.2.3+build.5").as_deref(), Some("1.2.3+build.5"));
        for not in [
            "latest",
            "main",
            "sha256-abc.sig",
            "v",
            "vnext",
            "1.02",
            "1.2.3.4",
            "-1",
            "",
        ] {
            assert_eq!(v(not), None, "{not:?}");
        }
    }

    #[test]
    fn default_selects_every_remote_tag_sorted() {
        let s = TagSelector::default();
        assert!(s.needs_listing());
        let mut expected = remote();
        expected.sort();
        assert_eq!(s.select(&remote()), expected);
    }

    #[test]
    fn explicit_list_ignores_remote_and_dedups() {
        let s = TagSelector {
            tags: Some(vec!["b".into(), "a".into(), "b".into()]),
            ..Default::default()
        };
        assert!(!s.needs_listing());
        assert_eq!(s.select(&remote()), ["a", "b"]);
        // Filters still apply to an explicit list.
        let s = TagSelector {
            tags: Some(vec!["latest".into(), "1.0".into()]),
            semver: Some(parse_semver_range(">=1").unwrap()),
            ..Default::default()
        };
        assert_eq!(s.select(&[]), ["1.0"]);
    }

    #[test]
    fn allow_and_deny_are_anchored_and_combine() {
        let s = TagSelector {
            allow: vec![re(r"1\..*"), re("2.*")],
            deny: vec![re(".*-rc.*")],
            ..Default::default()
        };
        assert_eq!(s.select(&remote()), ["1.0", "1.2.3", "2.0.0"]);
        // Anchored: "1" alone would otherwise match "v1.3.0" and "2.0.0-rc1".
        let s = TagSelector {
            allow: vec![re("1")],
            ..Default::default()
        };
        assert!(s.select(&remote()).is_empty());
        // Unanchored (skopeo): a match anywhere in the tag.
        let s = TagSelector {
            allow: vec![compile_regex("1", false).unwrap()],
            ..Default::default()
        };
        assert_eq!(s.select(&remote()), ["1.0", "1.2.3", "2.0.0-rc1", "v1.3.0"]);
        // Alternation stays inside the anchors.
        assert!(!re("a|b").is_match("ab"));
        assert!(re("a|b").is_match("b"));
    }

    #[test]
    fn semver_skips_non_versions_and_prereleases() {
        let s = TagSelector {
            semver: Some(parse_semver_range(">=1.2, <3").unwrap()),
            ..Default::default()
        };
        // Sorted by version, highest first; 2.0.0-rc1 is a pre-release outside the range's
        // own release line, as Cargo (and skopeo's Masterminds semver) treat it.
        assert_eq!(s.select(&remote()), ["2.0.0", "v1.3.0", "1.2.3"]);
        let s = TagSelector {
            semver: Some(parse_semver_range(">=2.0.0-rc0").unwrap()),
            ..Default::default()
        };
        assert_eq!(s.select(&remote()), ["2.0.0", "2.0.0-rc1"]);
    }

    #[test]
    fn latest_counts_versions_highest_first() {
        let latest = |n| TagSelector {
            latest: Some(n),
            ..Default::default()
        };
        assert_eq!(latest(2).select(&remote()), ["2.0.0", "2.0.0-rc1"]);
        assert_eq!(
            latest(10).select(&remote()),
            ["2.0.0", "2.0.0-rc1", "v1.3.0", "1.2.3", "1.0"]
        );
        assert!(latest(0).select(&remote()).is_empty());
        // Two spellings of one version are one version: both are kept.
        let tags = ["1.2", "v1.2.0", "1.1", "x"].map(String::from);
        assert_eq!(latest(1).select(&tags), ["1.2", "v1.2.0"]);

        // The full pipeline: allow, deny, range, then latest.
        let s = TagSelector {
            allow: vec![re(r"v?[0-9.]+(-rc[0-9]+)?")],
            deny: vec![re("2.*")],
            semver: Some(parse_semver_range(">=1").unwrap()),
            latest: Some(2),
            ..Default::default()
        };
        assert_eq!(s.select(&remote()), ["v1.3.0", "1.2.3"]);
    }

    #[test]
    fn latest_with_suffix_flavours() {
        let tags = [
            "1.25.3-alpine",
            "1.25.3",
            "1.25.2-alpine",
            "1.24.0-alpine",
            "alpine",
        ]
        .map(String::from);
        let s = TagSelector {
            allow: vec![re(".*-alpine")],
            latest: Some(2),
            ..Default::default()
        };
        assert_eq!(s.select(&tags), ["1.25.3-alpine", "1.25.2-alpine"]);
    }

    #[test]
    fn range_and_regex_errors_name_the_input() {
        assert_eq!(
            parse_semver_range(">=1.2 <2").unwrap_err().to_string(),
            "invalid semver range \">=1.2 <2\": expected comma after minor version number, \
             found '<'; write comma-separated comparators such as \">=1.2, <2\" using = > >= < \
             <= ~ ^ and wildcards like 1.2.* (`||` and hyphen ranges are not supported)"
        );
        assert_eq!(
            compile_regex(r"3\.(", true).unwrap_err().to_string(),
            r"invalid regular expression '3\.(': unclosed group (Rust regex syntax, close to Go's RE2)"
        );
        assert!(parse_semver_range(">= 3.12.0").is_ok());
    }

    #[test]
    fn platform_parsing() {
        let p: PlatformSpec = "linux/arm/v7".parse().unwrap();
        assert_eq!(
            p,
            PlatformSpec {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into())
            }
        );
        assert_eq!(p.to_string(), "linux/arm/v7");
        for ok in [
            "linux/amd64",
            "linux/arm64/v8",
            "windows/amd64",
            "linux/amd64/v3",
        ] {
            assert_eq!(ok.parse::<PlatformSpec>().unwrap().to_string(), ok);
        }
        let err = |s: &str| s.parse::<PlatformSpec>().unwrap_err().to_string();
        assert_eq!(
            err("linux"),
            "invalid platform \"linux\": write os/architecture[/variant], e.g. linux/amd64, \
             linux/arm64 or linux/arm/v7"
        );
        for bad in ["linux/", "/amd64", "linux/arm/", "linux/arm/v7/x", ""] {
            assert!(err(bad).contains("write os/architecture"), "{bad:?}");
        }
        assert_eq!(
            err("linux/aarch64"),
            "invalid platform \"linux/aarch64\": unknown architecture \"aarch64\" (did you mean \
             arm64?); known: 386, amd64, arm, arm64, loong64, mips, mips64, mips64le, mipsle, \
             ppc64, ppc64le, riscv64, s390x, wasm"
        );
        assert_eq!(
            err("linx/amd64"),
            "invalid platform \"linx/amd64\": unknown os \"linx\"; known: aix, android, darwin, \
             dragonfly, freebsd, illumos, ios, js, linux, netbsd, openbsd, plan9, solaris, \
             wasip1, windows"
        );
        assert_eq!(
            err("linux/arm/v9"),
            "invalid platform \"linux/arm/v9\": unknown variant \"v9\" for arm; known: v5, v6, \
             v7, v8"
        );
        assert_eq!(
            err("linux/s390x/v1"),
            "invalid platform \"linux/s390x/v1\": unknown variant \"v1\" for s390x; known: \
             none, this architecture has no variants"
        );
    }

    #[test]
    fn platform_matching_normalises_variants() {
        let plat = |os: &str, arch: &str, variant: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        };
        let spec = |s: &str| s.parse::<PlatformSpec>().unwrap();
        assert!(spec("linux/arm64").matches(&plat("linux", "arm64", Some("v8"))));
        assert!(spec("linux/arm64").matches(&plat("linux", "arm64", None)));
        assert!(spec("linux/arm64/v8").matches(&plat("linux", "arm64", None)));
        assert!(spec("linux/arm64/v8").matches(&plat("linux", "aarch64", Some("8"))));
        assert!(spec("linux/arm").matches(&plat("linux", "arm", Some("v7"))));
        assert!(!spec("linux/arm").matches(&plat("linux", "arm", Some("v6"))));
        assert!(spec("linux/arm/v6").matches(&plat("linux", "arm", Some("v6"))));
        assert!(spec("linux/amd64").matches(&plat("linux", "amd64", None)));
        assert!(spec("linux/amd64").matches(&plat("linux", "x86_64", None)));
        assert!(!spec("linux/amd64").matches(&plat("linux", "amd64", Some("v3"))));
        assert!(!spec("linux/amd64").matches(&plat("windows", "amd64", None)));
        assert!(!spec("linux/amd64").matches(&plat("unknown", "unknown", None)));
        assert!(!spec("linux/arm64").matches(&plat("linux", "arm", Some("v8"))));
    }

    fn index_of(children: &[(&str, &str)]) -> Vec<u8> {
        let manifests: Vec<String> = children
            .iter()
            .map(|(digest, platform)| {
                let parts: Vec<&str> = platform.split('/').collect();
                let variant = parts
                    .get(2)
                    .map(|v| format!(r#","variant":"{v}""#))
                    .unwrap_or_default();
                let attest = if parts[0] == "unknown" {
                    format!(
                        r#","annotations":{{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"{}"}}"#,
                        parts[2]
                    )
                } else {
                    String::new()
                };
                format!(
                    r#"{{"mediaType":"m","digest":"{digest}","size":1,"platform":{{"os":"{}","architecture":"{}"{}, "os.version":"10"}}{attest}}}"#,
                    parts[0],
                    parts[1],
                    if parts[0] == "unknown" { String::new() } else { variant }
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"x","manifests":[{}]}}"#,
            manifests.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn cutting_an_index_keeps_wanted_children_as_they_were() {
        let keep: Vec<PlatformSpec> = vec!["linux/arm64".parse().unwrap()];
        let index = index_of(&[
            ("a", "linux/amd64"),
            ("b", "linux/arm64/v8"),
            ("c", "unknown/unknown/a"),
            ("d", "unknown/unknown/b"),
        ]);
        let PlatformCut::Cut { bytes, dropped } = cut_index(&index, &keep, "sha256:up").unwrap()
        else {
            panic!("not cut")
        };
        assert_eq!(dropped, ["linux/amd64", "unknown/unknown"]);
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let digests: Vec<&str> = doc["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["digest"].as_str().unwrap())
            .collect();
        // The arm64 image and the attestation that describes it.
        assert_eq!(digests, ["b", "d"]);
        assert_eq!(doc["manifests"][0]["platform"]["os.version"], "10");
        assert_eq!(doc["annotations"][UPSTREAM_DIGEST], "sha256:up");
        assert_eq!(doc["mediaType"], "x");
    }

    #[test]
    fn an_index_with_every_child_wanted_is_kept_whole() {
        let keep: Vec<PlatformSpec> = vec![
            "linux/amd64".parse().unwrap(),
            "linux/arm/v7".parse().unwrap(),
        ];
        let index = index_of(&[("a", "linux/amd64"), ("b", "linux/arm")]);
        assert_eq!(cut_index(&index, &keep, "u").unwrap(), PlatformCut::Whole);
    }

    #[test]
    fn an_index_without_a_wanted_platform_says_what_it_has() {
        let keep: Vec<PlatformSpec> = vec!["linux/s390x".parse().unwrap()];
        let index = index_of(&[
            ("a", "linux/amd64"),
            ("b", "linux/arm/v6"),
            ("c", "unknown/unknown/a"),
        ]);
        assert_eq!(
            cut_index(&index, &keep, "u").unwrap(),
            PlatformCut::Nothing {
                available: vec!["linux/amd64".into(), "linux/arm/v6".into()]
            }
        );
    }
}
