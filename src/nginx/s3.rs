//! `gen-conf --s3-origin`: an nginx front with no local store, serving the bucket that
//! `static-registry publish` wrote (its layout is in `crate::bucket`).

use super::{
    GenConfOptions, NginxError, Part, Rendered, SIZE_RE, TIME_RE, check, check_server,
    default_server_warnings, path_text, server_context,
};
use crate::bucket::plain_path;

const TEMPLATE: &str = "s3-front.conf.tera";
const EMBEDDED: &str = include_str!("../../templates/s3-front.conf.tera");

/// The bucket a front serves.
#[derive(Debug, Clone)]
pub struct S3Front {
    /// The layout's root over plain HTTP(S): `https://s3.example/bucket/prefix`
    /// (path-style) or `https://bucket.s3.example/prefix` (virtual-hosted).
    pub origin: String,
    /// Keep what was read in nginx's proxy cache (`GenConfOptions::proxy_cache`).
    pub cache: bool,
}

/// The origin URL, split into what nginx's configuration needs; every part is checked
/// against a strict grammar before it is rendered.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: &'static str,
    host: String,
    port: u16,
    /// `/bucket/prefix`, or empty.
    base: String,
}

fn origin(text: &str) -> Result<Origin, NginxError> {
    let bad = |rule| NginxError::InvalidOption {
        option: "--s3-origin",
        value: text.to_owned(),
        rule,
    };
    let url = url::Url::parse(text)
        .map_err(|_| bad("a URL: http(s)://<host>[:port]/<bucket>[/<prefix>]"))?;
    let scheme = match url.scheme() {
        "http" => "http",
        "https" => "https",
        _ => return Err(bad("an http:// or https:// URL")),
    };
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad(
            "a URL without credentials, query or fragment: the bucket is read anonymously",
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d))
            if d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
        {
            d.to_owned()
        }
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        _ => return Err(bad("a host name of [A-Za-z0-9.-] or an IP address")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad("a URL with a port"))?;
    let base = url.path().trim_end_matches('/');
    if !base.is_empty() && !plain_path(&base[1..]) {
        return Err(bad(
            "a path of components of [A-Za-z0-9._-]: /<bucket>[/<prefix>]",
        ));
    }
    Ok(Origin {
        scheme,
        host,
        port,
        base: base.to_owned(),
    })
}

pub(super) fn render(opts: &GenConfOptions, front: &S3Front) -> Result<Rendered, NginxError> {
    if opts.part != Part::Server {
        return Err(NginxError::InvalidOption {
            option: "--s3-origin",
            value: front.origin.clone(),
            rule: "a whole server block: leave out --locations-only and --maps-only",
        });
    }
    check_server(opts)?;
    let origin = origin(&front.origin)?;
    let cache = &opts.proxy_cache;
    let mut ctx = server_context(opts)?;
    ctx.insert("origin", &front.origin);
    ctx.insert("scheme", origin.scheme);
    ctx.insert("host", &origin.host);
    ctx.insert("port", &origin.port);
    let default_port = if origin.scheme == "https" { 443 } else { 80 };
    ctx.insert(
        "host_header",
        &if origin.port == default_port {
            origin.host.clone()
        } else {
            format!("{}:{}", origin.host, origin.port)
        },
    );
    ctx.insert("base", &origin.base);
    ctx.insert("cache", &front.cache);
    if front.cache {
        ctx.insert("cache_dir", &path_text("--proxy-cache", &cache.dir)?);
        check(
            "--proxy-cache-size",
            &cache.max_size,
            &SIZE_RE,
            "a size: 500m, 10g",
        )?;
        check(
            "--proxy-tag-validity",
            &cache.tag_validity,
            &TIME_RE,
            "a time: 30s, 1m, 1h",
        )?;
        ctx.insert("cache_size", &cache.max_size);
    }
    ctx.insert("tag_validity", &cache.tag_validity);
    if origin.scheme == "https" {
        ctx.insert(
            "upstream_ca",
            &path_text("--upstream-ca", &cache.upstream_ca)?,
        );
    }
    let template = match &opts.templates {
        Some(dir) => {
            let path = dir.join(TEMPLATE);
            std::fs::read_to_string(&path).map_err(|source| NginxError::Io { path, source })?
        }
        None => EMBEDDED.to_owned(),
    };
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    let template_error = |source| NginxError::Template {
        name: TEMPLATE.to_owned(),
        source,
    };
    tera.add_raw_template(TEMPLATE, &template)
        .map_err(template_error)?;
    let config = tera.render(TEMPLATE, &ctx).map_err(template_error)?;
    let warnings = if opts.server_name == "_" {
        default_server_warnings(opts)
    } else {
        Vec::new()
    };
    Ok(Rendered {
        config,
        skipped: Vec::new(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_origins_are_checked_before_they_reach_nginx() {
        let o = origin("https://s3.example/bucket/mirror/").unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: "https",
                host: "s3.example".into(),
                port: 443,
                base: "/bucket/mirror".into()
            }
        );
        let o = origin("http://127.0.0.1:7480/b").unwrap();
        assert_eq!((o.port, o.base.as_str()), (7480, "/b"));
        assert_eq!(origin("https://b.s3.example").unwrap().base, "");
        for bad in [
            "s3://bucket/p",
            "https://user:pw@s3.example/b",
            "https://s3.example/b?x=1",
            "https://s3.example/b;x",
            "https://s3.example/a//b",
            "https://s3.example/a b",
            "ftp://s3.example/b",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
