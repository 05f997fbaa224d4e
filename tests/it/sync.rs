//! `sync --once`: one round of a configuration into the store and a registry at once,
//! the on-change command after a round that changed the store, and a second round that
//! only asks.

use std::fs;

use crate::harness::registry::Registry;
use crate::harness::store::{assert_consistent, registry_with_fixtures, run, tags, write_file};

fn sync(config: &str, root: &std::path::Path) -> (i32, serde_json::Value, String) {
    tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            config,
            "--root",
            root.to_str().unwrap(),
            "--once",
            "--json",
        ])
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_fills_the_store_and_a_registry_and_a_second_round_only_asks() {
    let (src, fx, root) = registry_with_fixtures().await;
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("changed");
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "registries:\n  \"{s}\": {{tls-verify: false}}\nimages:\n  - source: {s}/apps/api\n    tags: [v1]\n  - source: {s}/oci/multi\n    tags: [\"1.0\"]\nto:\n  - store\n  - registry: {t}/mirror\n    tls-verify: false\non-change: [sh, -c, \"echo round >> {m}\"]\n",
            s = src.addr(),
            t = target.addr(),
            m = marker.display()
        ),
    );
    let (code, json, stderr) = sync(&config, root.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["store_changed"], true, "{json}");
    assert_eq!(json["rounds"][0]["source"], src.addr(), "{json}");
    for (repo, tag) in [("apps/api", "v1"), ("oci/multi", "1.0")] {
        let digest = fx.manifest(repo, tag).digest.clone();
        assert!(
            tags(root.path(), repo).contains(&(tag.to_owned(), digest.clone())),
            "{repo} in the store"
        );
        assert_eq!(
            target.manifest_digest(&format!("mirror/{repo}"), tag).await,
            Some(digest),
            "{repo} at the target"
        );
    }
    assert_consistent(root.path());
    assert_eq!(fs::read_to_string(&marker).unwrap(), "round\n");

    // Nothing changed: one HEAD per tag at the source and at the target, no writes, no
    // on-change.
    src.mark();
    target.mark();
    let (code, json, stderr) = sync(&config, root.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["store_changed"], false, "{json}");
    for t in json["rounds"][0]["targets"].as_array().unwrap() {
        assert_eq!(t["unchanged"], 2, "{json}");
    }
    let heads = |reg: &Registry| {
        reg.requests()
            .into_iter()
            .filter(|(m, p)| !(m == "HEAD" && p.contains("/manifests/")) && p != "/v2/")
            .collect::<Vec<_>>()
    };
    assert!(heads(&src).is_empty(), "{:?}", src.requests());
    assert!(heads(&target).is_empty(), "{:?}", target.requests());
    assert_eq!(fs::read_to_string(&marker).unwrap(), "round\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_s_bad_to_entries_are_each_named_and_nothing_runs() {
    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        "images:\n  - source: 127.0.0.1:9/a/b\n    tags: [\"1\"]\nto:\n  - store\n  - store\n  - registry: \"bad host!/x\"\n  - registry: 127.0.0.1:9/ok\n    overwrite: sometimes\n  - registry: 127.0.0.1:9/tagged:1\n  - 5\non-change: []\n",
    );
    let root = work.path().join("images");
    let (code, _, stderr) = sync(&config, &root);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "`store` is listed more than once",
        "to[2].registry",
        "to[3].overwrite",
        "to[4].registry",
        "to[5]: expected `store`",
        "on-change: the command is empty",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(!root.exists(), "a refused config touched the store");

    // fetch reads the same file format, and refuses what only sync does.
    let fetch_config = write_file(
        work.path(),
        "fetch.yaml",
        "images:\n  - source: 127.0.0.1:9/a/b\n    tags: [\"1\"]\nto:\n  - registry: 127.0.0.1:9/m\n",
    );
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "fetch",
            "--config",
            &fetch_config,
            "--root",
            root.to_str().unwrap(),
        ])
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("static-registry sync"), "{stderr}");
}

/// The hints of a round name the configuration's keys, not command-line flags: the
/// source's `registries:` entry, or the target's `to:` entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_failure_hints_at_the_registries_entry_of_the_source_and_the_to_entry_of_a_target() {
    let (src, _fx, root) = registry_with_fixtures().await;
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = src.addr();
    let t = target.addr();
    let plain_source = write_file(
        work.path(),
        "source.yaml",
        &format!("images:\n  - source: {s}/apps/api\n    tags: [v1]\n"),
    );
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &plain_source,
            "--root",
            root.path().to_str().unwrap(),
            "--once",
            "--retries",
            "0",
        ])
    });
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("hint: ")
            && l.contains(&format!("under `registries.\"{s}\"`"))
            && l.contains("tls-verify: false")),
        "{stderr}"
    );
    let plain_target = write_file(
        work.path(),
        "target.yaml",
        &format!(
            "registries:\n  \"{s}\": {{tls-verify: false}}\nimages:\n  - source: {s}/apps/api\n    tags: [v1]\nto:\n  - registry: {t}/m\n"
        ),
    );
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &plain_target,
            "--root",
            root.path().to_str().unwrap(),
            "--once",
            "--dest-retries",
            "0",
        ])
    });
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("hint: ")
            && l.contains("in its `to:` entry")
            && l.contains("tls-verify: false")),
        "{stderr}"
    );
}

/// `images-from`: the command's references are copied, a line it cannot use is named
/// (and fails the round) without keeping the others from being copied; a command that
/// fails is named with what it printed.
#[tokio::test(flavor = "multi_thread")]
async fn images_from_copies_what_the_command_lists_and_names_what_it_cannot_use() {
    let (src, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let s = src.addr();
    let list = write_file(
        work.path(),
        "list.sh",
        &format!(
            "echo '# today'\necho {s}/apps/api:v1\necho {s}/oci/multi\necho other.example/x:1\n"
        ),
    );
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "prefix: listed\nregistries:\n  \"{s}\": {{tls-verify: false, images-from: [sh, {list}]}}\n"
        ),
    );
    let (code, json, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &config,
            "--root",
            root.path().to_str().unwrap(),
            "--once",
            "--json",
        ])
    });
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("printed 1 unusable line: line 4: \"other.example/x:1\": not in"),
        "{stderr}"
    );
    assert!(tags(root.path(), "listed/apps/api").contains(&(
        "v1".to_owned(),
        fx.manifest("apps/api", "v1").digest.clone()
    )));
    // A bare repository: every tag.
    assert_eq!(
        crate::harness::store::tag_names(root.path(), "listed/oci/multi"),
        fx.tags("oci/multi")
    );
    assert_eq!(
        json["rounds"][0]["unresolved"].as_array().unwrap().len(),
        1,
        "{json}"
    );

    let failing = write_file(
        work.path(),
        "failing.yaml",
        &format!(
            "registries:\n  \"{s}\": {{tls-verify: false, images-from: [sh, -c, \"echo no list >&2; exit 3\"]}}\n"
        ),
    );
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &failing,
            "--root",
            root.path().to_str().unwrap(),
            "--once",
        ])
    });
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("images-from command \"sh -c echo no list >&2; exit 3\" failed (exit status: 3): no list"), "{stderr}");
}
