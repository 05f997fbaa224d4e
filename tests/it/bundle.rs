//! Air-gap bundles: `export` (full, and deltas `--since` a base) and `import`, between
//! stores filled from the fixture registry.

use std::fs;
use std::path::Path;

use crate::harness::served_tempdir;
use crate::harness::skopeo::skopeo_inspect_raw;
use crate::harness::store::{assert_verify_clean, fetch, fetch_ok, registry_with_fixtures, run};

fn export(root: &Path, out: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "export",
        "--root",
        root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn import(root: &Path, bundles: &[&Path]) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "import",
        "--root",
        root.to_str().unwrap(),
        "--json",
        "--quiet",
    ];
    args.extend(bundles.iter().map(|b| b.to_str().unwrap()));
    run(&args)
}

/// Every repository's tags and what they point at, and its manifests by digest: what a
/// client can pull.
fn served(root: &Path) -> Vec<(String, String, String)> {
    let (code, json, stderr) = run(&["ls", "--root", root.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let mut out = Vec::new();
    for repo in json.as_array().expect("ls --json is a list") {
        let name = repo["name"].as_str().unwrap().to_owned();
        for t in repo["tags"].as_array().unwrap() {
            out.push((
                name.clone(),
                t["tag"].as_str().unwrap().to_owned(),
                t["digest"].as_str().unwrap().to_owned(),
            ));
        }
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join(&name).join("index.json")).unwrap())
                .unwrap();
        for m in index["manifests"].as_array().unwrap() {
            out.push((
                name.clone(),
                "@".to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// A full bundle skopeo reads as an OCI archive; a later store exported as a delta on
/// it carries only the new blobs; the delta alone is refused with nothing imported; both
/// (in either order) make a store equal to the later one, clean for `verify`.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_bundle_and_a_delta_make_the_later_store_and_the_delta_alone_is_refused() {
    let (reg, fx, src) = registry_with_fixtures().await;
    let s = src.path();
    let r = |image: &str| format!("{}/{image}", reg.addr());
    fetch_ok(s, &[r("base/alpine:latest"), r("docker/multi:v1")]);
    // With its SBOM (a referrer, kept under the registry's referrers fallback tag).
    let (code, _, stderr) = fetch(s, &[r("apps/web:v1")], &["--referrers"]);
    assert_eq!(code, 0, "{stderr}");
    let out = tempfile::tempdir().unwrap();
    // The tag alone brings what refers to it.
    let (code, plan, stderr) = run(&[
        "export",
        "--root",
        s.to_str().unwrap(),
        "--dry-run",
        "--json",
        "apps/web:v1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let planned = plan["images"].to_string();

    assert!(
        planned.contains("apps/web:v1") && planned.contains("apps/web:sha256-"),
        "{plan}"
    );
    let full = out.path().join("full.tar");
    let (code, first, stderr) = export(s, &full, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.path().join("full.tar.state.json").is_file());
    let via_skopeo =
        skopeo_inspect_raw(&format!("oci-archive:{}:apps/web:v1", full.display()), &[]);
    assert_eq!(via_skopeo, fx.manifest("apps/web", "v1").bytes);

    // Later: new images, and a retag of an image the first bundle had.
    fetch_ok(s, &[r("apps/api:v1"), r("base/alpine:3.19")]);
    // An index cut to one platform: its upstream digest must travel.
    let (code, _, stderr) = fetch(s, &[r("oci/multi:1.0")], &["--platform", "linux/amd64"]);
    assert_eq!(code, 0, "{stderr}");
    let delta = out.path().join("delta.tar.zst");
    let (code, json, stderr) = export(s, &delta, &["--since", full.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["base"], first["set"], "{json}");
    assert!(json["needed"].as_u64().unwrap() > 0, "{json}");
    let carried = json["carried"].as_u64().unwrap();
    let total = first["carried"].as_u64().unwrap();
    assert!(carried > 0 && carried < total + carried, "{json}");

    let alone = served_tempdir("it-bundle-alone-");
    let (code, _, stderr) = import(alone.path(), &[&delta]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("delta on base") && stderr.contains("nothing was imported"),
        "{stderr}"
    );
    assert!(
        served(alone.path()).is_empty(),
        "the refused delta published something"
    );

    let dst = served_tempdir("it-bundle-dst-");
    let (code, json, stderr) = import(dst.path(), &[&delta, &full]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        json["bundles"][0]["files"][0],
        full.to_str().unwrap(),
        "the base goes first"
    );
    let later = served(s);
    assert!(later.len() > 10, "{later:?}");
    assert_eq!(served(dst.path()), later);
    let ls = |root: &Path| run(&["ls", "--root", root.to_str().unwrap(), "--json"]).1;
    let listed = ls(s).to_string();
    assert!(listed.contains("upstream_digest"), "{listed}");
    assert_eq!(
        ls(dst.path()).to_string(),
        listed,
        "platform cuts and sizes differ"
    );
    assert_verify_clean(dst.path(), "after importing a bundle and its delta");
    // The receiving store's state is a base for the next delta: nothing new, no blob.
    let state = dst.path().join(".bundle-state.json");
    let (code, json, stderr) = export(
        s,
        &out.path().join("none.tar"),
        &["--since", state.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["carried"], 0, "{json}");
    // Imported again: nothing to receive, every image unchanged.
    let (code, json, stderr) = import(dst.path(), &[&full, &delta]);
    assert_eq!(code, 0, "{stderr}");
    for b in json["bundles"].as_array().unwrap() {
        assert_eq!(b["blobs"]["written"], 0, "{b}");
    }
}

/// The entries of a bundle: (header, data).
fn entries(bundle: &Path) -> Vec<(tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(fs::File::open(bundle).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (e.header().clone(), data)
        })
        .collect()
}

fn write_tar(path: &Path, entries: &[(tar::Header, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (h, data) in entries {
        b.append(h, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// A flipped byte, a truncated file, an entry outside the layout (`../`), a symlink and
/// an entry longer than the bundle declares: each refused, nothing published, the store
/// clean; and an import killed in the middle of a blob completes when run again.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_or_broken_bundles_publish_nothing_and_a_killed_import_completes_on_rerun() {
    let (reg, _fx, src) = registry_with_fixtures().await;
    let s = src.path();
    fetch_ok(
        s,
        &[
            format!("{}/apps/api:v1", reg.addr()),
            format!("{}/apps/web:v1", reg.addr()),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let full = out.path().join("full.tar");
    let (code, _, stderr) = export(s, &full, &[]);
    assert_eq!(code, 0, "{stderr}");
    let good = entries(&full);
    // The largest blob: apps/api's ~300 KiB layer.
    let big = (3..good.len()).max_by_key(|&i| good[i].1.len()).unwrap();
    let big_name = good[big].0.path().unwrap().display().to_string();

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut flipped = good.clone();
    let middle = flipped[big].1.len() / 2;
    flipped[big].1[middle] ^= 0xff;
    let path = out.path().join("flipped.tar");
    write_tar(&path, &flipped);
    cases.push(("flipped", fs::read(&path).unwrap(), "digest"));
    let bytes = fs::read(&full).unwrap();
    cases.push((
        "truncated",
        bytes[..bytes.len() * 2 / 3].to_vec(),
        "truncated",
    ));
    let mut traversal = good.clone();
    let mut h = good[big].0.clone();
    h.as_old_mut().name[..9].copy_from_slice(b"../evil\0\0");
    h.set_cksum();
    traversal.insert(3, (h, b"evil".to_vec()));
    traversal[3].0.set_size(4);
    traversal[3].0.set_cksum();
    write_tar(&path, &traversal);
    cases.push(("traversal", fs::read(&path).unwrap(), "\"../evil\""));
    let mut symlink = good.clone();
    symlink[big].0.set_entry_type(tar::EntryType::Symlink);
    symlink[big].0.set_link_name("/etc/passwd").unwrap();
    symlink[big].0.set_size(0);
    symlink[big].0.set_cksum();
    symlink[big].1.clear();
    write_tar(&path, &symlink);
    cases.push(("symlink", fs::read(&path).unwrap(), "Symlink"));
    let mut oversize = good.clone();
    oversize[big].1.extend_from_slice(&[0u8; 4096]);
    let len = oversize[big].1.len() as u64;
    oversize[big].0.set_size(len);
    oversize[big].0.set_cksum();
    write_tar(&path, &oversize);
    cases.push(("oversize", fs::read(&path).unwrap(), "bytes, and"));

    for (what, bytes, says) in cases {
        let bundle = out.path().join(format!("{what}.tar"));
        fs::write(&bundle, bytes).unwrap();
        let dst = served_tempdir("it-bundle-hostile-");
        let (code, _, stderr) = import(dst.path(), &[&bundle]);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(
            served(dst.path()).is_empty(),
            "{what}: something was published"
        );
        assert!(!dst.path().parent().unwrap().join("evil").exists());
        assert_verify_clean(dst.path(), what);
    }

    // Killed 100 KiB into the big blob (as by SIGKILL), then run again.
    let dst = served_tempdir("it-bundle-killed-");
    let killed = crate::harness::run_with_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_static-registry"))
            .args(["import", "--quiet", "--root", dst.path().to_str().unwrap()])
            .arg(&full)
            .env("STATIC_REGISTRY_CRASH_AT", "blob-bytes:102400"),
        std::time::Duration::from_secs(60),
    );
    assert!(
        !killed.status.success(),
        "the crash point was not reached ({big_name})"
    );
    assert!(served(dst.path()).is_empty(), "a killed import published");
    let (code, json, stderr) = import(dst.path(), &[&full]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(served(dst.path()), served(s), "{json}");
    assert_verify_clean(dst.path(), "after a killed import and its rerun");
}

/// `--split` writes parts of at most the size given, which import takes in any order;
/// with a part missing it names the part and publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_split_in_parts_imports_in_any_order_and_a_missing_part_is_named() {
    let (reg, _fx, src) = registry_with_fixtures().await;
    let s = src.path();
    let refs: Vec<String> = [
        "base/alpine:latest",
        "apps/api:v1",
        "apps/web:v1",
        "oci/multi:1.0",
    ]
    .iter()
    .map(|i| format!("{}/{i}", reg.addr()))
    .collect();
    fetch_ok(s, &refs);
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("split.tar");
    let (code, json, stderr) = export(s, &bundle, &["--split", "64K"]);
    assert_eq!(code, 0, "{stderr}");
    let mut parts: Vec<std::path::PathBuf> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().into())
        .collect();
    assert!(parts.len() >= 3, "{json}");
    assert!(
        parts[0].to_str().unwrap().ends_with("split.tar.001"),
        "{json}"
    );
    for p in &parts {
        // Within the size, but for a blob larger than that, which has a part of its own.
        let blobs = entries(p).len() - 3;
        assert!(
            fs::metadata(p).unwrap().len() <= 64 << 10 || blobs == 1,
            "{}: {blobs} blobs",
            p.display()
        );
    }
    parts.reverse();

    let missing = served_tempdir("it-bundle-part-missing-");
    let some: Vec<&Path> = parts[1..].iter().map(|p| p.as_path()).collect();
    let (code, _, stderr) = import(missing.path(), &some);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("give every part"), "{stderr}");
    assert!(served(missing.path()).is_empty());

    let dst = served_tempdir("it-bundle-parts-");
    let all: Vec<&Path> = parts.iter().map(|p| p.as_path()).collect();
    let (code, _, stderr) = import(dst.path(), &all);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(served(dst.path()), served(s));
    assert_verify_clean(dst.path(), "after importing a split bundle");
}
