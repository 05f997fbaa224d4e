//! The control API (JSON over HTTP): health, metrics, and the sources with their
//! sync/pause/resume actions. Every route but /healthz needs `Authorization: Bearer
//! <token>` when a token is set; request bodies are bounded.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::browse::{self, BrowseError, TagFilters};
use super::jobs::{DistributeRequest, JobError, JobRequest, JobState, JobView};
use super::{Action, Service, ServiceError};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// An error answer: `{"error": {"code", "message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let (status, code) = match &e {
            ServiceError::UnknownSource(_) => (StatusCode::NOT_FOUND, "SOURCE_UNKNOWN"),
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ServiceError::FromFile(_) => (StatusCode::CONFLICT, "SOURCE_FROM_FILE"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        ApiError {
            status,
            code,
            message: crate::report::error_chain(&e).join(": "),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let (status, code) = match &e {
            JobError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            JobError::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "QUEUE_FULL"),
            JobError::Unknown(_) => (StatusCode::NOT_FOUND, "JOB_UNKNOWN"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<BrowseError> for ApiError {
    fn from(e: BrowseError) -> ApiError {
        let (status, code) = match &e {
            BrowseError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            BrowseError::Registry(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM"),
        };
        ApiError {
            status,
            code,
            message: crate::report::error_chain(&e).join(": "),
        }
    }
}

/// A body that is not the JSON asked for: 400 (415 without a JSON content type), with
/// serde's words for what is wrong and where.
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        // axum says 422 for JSON of the wrong shape; to a caller it is a bad request too.
        let status = match e.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        ApiError {
            status,
            code: "INVALID_REQUEST",
            message: e.body_text(),
        }
    }
}

#[derive(Clone)]
struct Api {
    service: Service,
    /// SHA-256 of the token: compared in constant time, whatever its length.
    token: Option<Arc<[u8; 32]>>,
}

/// The router; `token` (when given) guards everything but /healthz.
pub fn router(service: Service, token: Option<&str>) -> Router {
    let api = Api {
        service,
        token: token.map(|t| Arc::new(Sha256::digest(t.as_bytes()).into())),
    };
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/sources", get(list_sources))
        .route(
            "/v1/sources/{name}",
            get(get_source).put(put_source).delete(delete_source),
        )
        .route("/v1/sources/{name}/{action}", post(act))
        .route("/v1/registries/{host}/repositories", get(repositories))
        .route(
            "/v1/registries/{host}/repositories/{*rest}",
            get(repository),
        )
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/api/distribute/image", post(distribute))
        .route("/api/distribute/image/{id}", get(distributed))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(guarded)
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "NOT_FOUND",
                message: "no such endpoint; see the README's API table".to_owned(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Serves the API on `listener` until the service stops.
pub async fn serve(
    service: Service,
    listener: tokio::net::TcpListener,
    token: Option<String>,
) -> std::io::Result<()> {
    let stop = service.stopping();
    axum::serve(listener, router(service, token.as_deref()))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    let Some(want) = &api.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        let g: [u8; 32] = Sha256::digest(g.trim().as_bytes()).into();
        bool::from(g.ct_eq(want.as_ref()))
    });
    if ok {
        return next.run(req).await;
    }
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "UNAUTHORIZED",
        message: match given {
            None => "send the service's token as `Authorization: Bearer <token>`".to_owned(),
            Some(_) => "the bearer token is not the service's token".to_owned(),
        },
    }
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
    r
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.service.metrics(),
    )
}

#[derive(Deserialize)]
struct SourcesQuery {
    state: Option<String>,
}

async fn list_sources(
    State(api): State<Api>,
    Query(q): Query<SourcesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(s) = q
        .state
        .as_deref()
        .filter(|s| !["configured", "active", "paused", "running"].contains(s))
    {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_QUERY",
            message: format!("state={s:?}: give configured, active, paused or running"),
        });
    }
    Ok(Json(
        json!({"sources": api.service.sources(q.state.as_deref())}),
    ))
}

async fn get_source(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(api.service.source(&name)?))
}

/// Creates (201) or replaces (200) an API source: the body is a configuration in JSON
/// with one source, read as the file is.
async fn put_source(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let (created, view) = api.service.put_source(&name, body)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

async fn delete_source(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    api.service.delete_source(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    State(api): State<Api>,
    Path((name, action)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let action = match action.as_str() {
        "sync" => Action::Sync,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        _ => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                code: "NOT_FOUND",
                message: format!("{action:?}: a source's actions are sync, pause and resume"),
            });
        }
    };
    let view = api.service.act(&name, action)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn create_job(
    State(api): State<Api>,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let view = api.service.submit(request.validate()?)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn list_jobs(State(api): State<Api>) -> impl IntoResponse {
    Json(json!({"jobs": api.service.jobs().list()}))
}

async fn get_job(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(api.service.jobs().get(&id)?))
}

/// The old service's job submission: `{"id", "msg", "status"}`.
async fn distribute(
    State(api): State<Api>,
    body: Result<Json<DistributeRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let view = api.service.submit(request.validate()?)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": view.id, "msg": "job queued", "status": "QUEUED"})),
    ))
}

/// The old service's job state: `value` QUEUED, RUNNING, FINISHED or FAILED, the
/// endpoints that have the image, those skipped (their tag pointed elsewhere and
/// overwrite was false), and those that failed with why.
async fn distributed(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(distribute_view(&api.service.jobs().get(&id)?)))
}

fn distribute_view(v: &JobView) -> serde_json::Value {
    use crate::report::CopyStatus;
    let endpoints = |want: &[CopyStatus]| -> Vec<&str> {
        v.targets
            .iter()
            .filter(|t| t.status.is_some_and(|s| want.contains(&s)))
            .map(|t| t.endpoint.as_str())
            .collect()
    };
    let failed: Vec<serde_json::Value> = v
        .targets
        .iter()
        .filter(|t| t.status == Some(CopyStatus::Failed))
        .map(|t| json!({"endpoint": t.endpoint, "error": t.error.join(": ")}))
        .collect();
    let value = match v.state {
        JobState::Queued => "QUEUED",
        JobState::Running => "RUNNING",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
    };
    json!({
        "id": v.id,
        "value": value,
        "source": v.source,
        "created_at": v.created_at,
        "started_at": v.started_at,
        "finished_at": v.finished_at,
        "finished_endpoints": endpoints(&[CopyStatus::Copied, CopyStatus::Unchanged]),
        "skipped_clusters": endpoints(&[CopyStatus::Skipped]),
        "failed_endpoints": failed,
        "error": v.error,
    })
}

async fn repositories(
    State(api): State<Api>,
    Path(host): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let r = browse::repository(&host, None)?;
    let names = browse::repositories(&api.service.client_for(&r.registry), &r).await?;
    Ok(Json(json!({"registry": r.registry, "repositories": names})))
}

/// `{name}/tags` (with the `ls` filters as query parameters) or `{name}/tags/{tag}`.
async fn repository(
    State(api): State<Api>,
    Path((host, rest)): Path<(String, String)>,
    Query(filters): Query<TagFilters>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: format!("{rest:?}: ask for <repository>/tags or <repository>/tags/<tag>"),
    };
    if let Some(name) = rest.strip_suffix("/tags") {
        let r = browse::repository(&host, Some(name))?;
        let tags = browse::tags(&api.service.client_for(&r.registry), &r, &filters).await?;
        return Ok(Json(json!({"name": r.origin(), "tags": tags})).into_response());
    }
    let (name, tag) = rest.rsplit_once("/tags/").ok_or_else(not_found)?;
    crate::reference::validate_tag(tag).map_err(|e| BrowseError::Invalid(e.to_string()))?;
    let r = browse::repository(&host, Some(name))?;
    let view = browse::tag(&api.service.client_for(&r.registry), &r, tag).await?;
    Ok(Json(view).into_response())
}
