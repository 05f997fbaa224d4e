//! Any bytes as a manifest or index: parsing never panics, and every digest it yields is
//! a valid one (so never a path escape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use static_registry::manifest::{Kind, Manifest};

fuzz_target!(|data: &[u8]| {
    for content_type in [None, Some("application/vnd.oci.image.index.v1+json")] {
        if let Ok(m) = Manifest::parse(data, content_type) {
            let digests: Vec<_> = match &m.kind {
                Kind::Index(children) => children.iter().map(|d| &d.digest).collect(),
                Kind::Image { config, layers } => std::iter::once(&config.digest)
                    .chain(layers.iter().map(|d| &d.digest))
                    .collect(),
            };
            for d in digests {
                assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }
});
