//! A token server for docker-registry's `auth: token` (the docker token protocol),
//! in-process axum on plain HTTP loopback.
//!
//! It issues ES256 JWTs whose header carries the signing certificate (`x5c`), which a
//! [`TestCa`] issued: distribution 2.8 verifies that chain against `rootcertbundle`
//! (the CA), then the signature with the leaf's key (registry/auth/token/token.go).
//! Policy: anyone may pull the public repositories; the one user (Basic auth to this
//! server) may pull and push everything; wrong credentials get 401, no credentials on another
//! repository get a token with no access (as Docker Hub does), which the registry
//! then refuses.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::tls::TestCa;

/// `auth.token.service`: the JWT audience the registry accepts.
pub const SERVICE: &str = "it-registry";
/// `auth.token.issuer`: the JWT issuer the registry trusts.
pub const ISSUER: &str = "it-token-server";
const TOKEN_LIFETIME_SECS: u64 = 300;

/// One answered token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The `scope` query parameters, as sent.
    pub scopes: Vec<String>,
    /// The user the request authenticated as (`None`: anonymous).
    pub account: Option<String>,
    /// Repositories the token grants something on.
    pub granted: Vec<String>,
    pub status: u16,
}

struct Shared {
    key: EcdsaKeyPair,
    /// DER of the certificate of `key`, sent as `x5c`.
    cert_der: Vec<u8>,
    public: Vec<String>,
    user: (String, String),
    log: Mutex<Vec<Issued>>,
}

pub struct TokenServer {
    addr: String,
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    /// Start on a free loopback port, signing with a fresh certificate from `ca`.
    /// Must be called inside a tokio runtime, which then serves it.
    pub async fn start(ca: &TestCa, public: &[&str], user: &str, password: &str) -> TokenServer {
        let signer = ca.signing_cert("it token signer");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            signer.key.serialized_der(),
        )
        .expect("token signing key");
        let shared = Arc::new(Shared {
            key,
            cert_der: signer.cert_der,
            public: public.iter().map(|s| s.to_string()).collect(),
            user: (user.to_string(), password.to_string()),
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token server");
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new()
            .route("/token", get(issue))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenServer {
            addr,
            shared,
            _server: server,
        }
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The registry's `auth:` section trusting this server; `rootcertbundle` is a
    /// PEM file holding the CA given to [`TokenServer::start`].
    pub fn registry_yaml(&self, rootcertbundle: &Path) -> String {
        format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: \"{SERVICE}\"\n    issuer: \"{ISSUER}\"\n    rootcertbundle: \"{}\"\n",
            self.realm(),
            rootcertbundle.display()
        )
    }

    /// Every token request answered so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.shared.log.lock().unwrap().clone()
    }
}

async fn issue(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let service_ok =
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "service" && v == SERVICE);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let account = match basic {
        None => None,
        Some(pair) if pair.split_once(':') == Some((&s.user.0, &s.user.1)) => {
            Some(s.user.0.clone())
        }
        Some(pair) => {
            let user = pair.split_once(':').map(|(u, _)| u.to_string());
            s.log.lock().unwrap().push(Issued {
                scopes,
                account: user,
                granted: vec![],
                status: 401,
            });
            let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]});
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"it-token-server\"")],
                body.to_string(),
            )
                .into_response();
        }
    };
    if !service_ok {
        return (StatusCode::BAD_REQUEST, "unknown or missing service").into_response();
    }
    // "repository:<name>:<actions>": anyone may pull the public repositories; the user
    // may pull and push everything.
    let access: Vec<(String, Vec<&str>)> = scopes
        .iter()
        .filter_map(|sc| {
            let rest = sc.strip_prefix("repository:")?;
            let (name, actions) = rest.rsplit_once(':')?;
            let allowed: Vec<&str> = actions
                .split(',')
                .filter(|a| match *a {
                    "pull" => account.is_some() || s.public.iter().any(|p| p == name),
                    "push" => account.is_some(),
                    _ => false,
                })
                .collect();
            (!allowed.is_empty()).then(|| (name.to_string(), allowed))
        })
        .collect();
    let token = jwt(&s, account.as_deref().unwrap_or(""), &access);
    let granted = access.into_iter().map(|(name, _)| name).collect();
    s.log.lock().unwrap().push(Issued {
        scopes,
        account,
        granted,
        status: 200,
    });
    let body = json!({"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_SECS});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn jwt(s: &Shared, subject: &str, granted: &[(String, Vec<&str>)]) -> String {
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&s.cert_der)]});
    let access: Vec<_> = granted
        .iter()
        .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    // distribution 2.8 takes `aud` as one string, not a list.
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now,
        "iat": now,
        "jti": format!("it-{}", JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = s
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .expect("ES256 sign");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}
