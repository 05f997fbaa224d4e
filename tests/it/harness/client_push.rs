//! A whole blob push composed from the registry client's primitives (HEAD, then a mount
//! or an upload session finished in one PUT), as the copy engine composes them, so the
//! primitives can be tested one blob at a time.

use bytes::Bytes;
use static_registry::reference::Digest;
use static_registry::registry::{Client, RegistryError, Started};

/// How a blob reached the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The repository had it already (one HEAD).
    Present,
    /// Mounted from another repository of the same registry: no bytes sent.
    Mounted,
    Uploaded,
}

/// Put blob `digest` (whose bytes are `bytes`) into `repo` at `host`: nothing when the
/// repository has it, a mount from `mount_from` when the registry allows, else an upload.
pub async fn push_blob(
    client: &Client,
    host: &str,
    repo: &str,
    digest: &Digest,
    bytes: Bytes,
    mount_from: Option<&str>,
) -> Result<Pushed, RegistryError> {
    if client.blob_exists(host, repo, digest).await? {
        return Ok(Pushed::Present);
    }
    match client.start_upload(host, repo, digest, mount_from).await? {
        Started::Mounted => Ok(Pushed::Mounted),
        Started::Session(upload) => {
            client.finish_upload(upload, digest, bytes).await?;
            Ok(Pushed::Uploaded)
        }
    }
}
