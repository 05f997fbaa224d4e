//! The service as a process: its API served beside it, SIGTERM and SIGINT to stop, SIGHUP
//! to reload the configuration.

use super::{Service, api};
use crate::report::error_chain;

/// Runs `service` (and its API on `api`, with its token) until SIGTERM or SIGINT; SIGHUP
/// reloads the configuration.
pub async fn run(
    service: Service,
    api: Option<(tokio::net::TcpListener, Option<String>)>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let server =
        api.map(|(listener, token)| tokio::spawn(api::serve(service.clone(), listener, token)));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match service.reload() {
                Ok(changes) if changes.is_empty() => tracing::info!("configuration reloaded: no change"),
                Ok(changes) => tracing::info!(changes = %changes.join(", "), "configuration reloaded"),
                Err(e) => tracing::error!(error = %error_chain(&e).join(": "), "configuration refused; the previous one stays in force"),
            },
        }
    }
    tracing::info!("stopping: no new rounds; rounds in flight are abandoned");
    service.stop();
    service.stopped().await;
    if let Some(server) = server {
        server.await.expect("the API task does not panic")?;
    }
    Ok(())
}
