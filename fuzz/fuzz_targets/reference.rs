//! Any string: parsing never panics, and an accepted reference re-parses to itself and
//! names a repository that stays inside a store root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use static_registry::reference::Reference;
use static_registry::store::repo_path;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = s.parse::<Reference>() {
        let again: Reference = r.to_string().parse().expect("a normalised reference re-parses");
        assert_eq!(again, r);
        if let Ok(path) = repo_path(std::path::Path::new("/store"), &r.repository) {
            assert!(path.starts_with("/store/"));
            assert!(!r.repository.split('/').any(|c| c == ".." || c == "."));
        }
    }
});
