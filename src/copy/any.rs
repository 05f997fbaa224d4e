//! A destination of either kind, for a run that writes the store and registries at once
//! (a sync source with both as targets): the engine has one destination type.

use super::registry::{RegistryDestination, RegistryWriter};
use super::store::{StoreDestination, StoreWriter};
use super::{BlobWriter, Chunk, CopyError, Destination, Held, Put, Start};
use crate::manifest::{Descriptor, Verified};
use crate::reference::Digest;

pub enum AnyDestination {
    Store(StoreDestination),
    Registry(RegistryDestination),
}

pub enum AnyWriter {
    Store(StoreWriter),
    Registry(RegistryWriter),
}

/// `$call` on whichever endpoint `$self` holds.
macro_rules! either {
    ($self:expr, $d:ident => $call:expr) => {
        match $self {
            AnyDestination::Store($d) => $call,
            AnyDestination::Registry($d) => $call,
        }
    };
}

impl BlobWriter for AnyWriter {
    fn chunk(&self) -> usize {
        match self {
            AnyWriter::Store(w) => w.chunk(),
            AnyWriter::Registry(w) => w.chunk(),
        }
    }

    fn offset(&self) -> u64 {
        match self {
            AnyWriter::Store(w) => w.offset(),
            AnyWriter::Registry(w) => w.offset(),
        }
    }

    fn verifies(&self) -> bool {
        match self {
            AnyWriter::Store(w) => w.verifies(),
            AnyWriter::Registry(w) => w.verifies(),
        }
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), CopyError> {
        match self {
            AnyWriter::Store(w) => w.write(chunk).await,
            AnyWriter::Registry(w) => w.write(chunk).await,
        }
    }

    async fn finish(self, digest: &Digest, last: Chunk) -> Result<(), CopyError> {
        match self {
            AnyWriter::Store(w) => w.finish(digest, last).await,
            AnyWriter::Registry(w) => w.finish(digest, last).await,
        }
    }
}

impl Destination for AnyDestination {
    type Writer = AnyWriter;

    fn name(&self) -> &str {
        either!(self, d => d.name())
    }

    fn registry(&self) -> Option<&str> {
        either!(self, d => d.registry())
    }

    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Held>, CopyError> {
        either!(self, d => d.tag(repo, tag).await)
    }

    async fn image(
        &self,
        repo: &str,
        digest: &Digest,
        platforms: Option<&str>,
    ) -> Result<Option<Held>, CopyError> {
        either!(self, d => d.image(repo, digest, platforms).await)
    }

    async fn has_manifest(&self, repo: &str, desc: &Descriptor) -> Result<bool, CopyError> {
        either!(self, d => d.has_manifest(repo, desc).await)
    }

    async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
        either!(self, d => d.has_blob(repo, digest).await)
    }

    async fn start_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
    ) -> Result<Start<AnyWriter>, CopyError> {
        Ok(match self {
            AnyDestination::Store(d) => match d.start_blob(repo, desc, mount_from).await? {
                Start::Mounted => Start::Mounted,
                Start::Write(w) => Start::Write(AnyWriter::Store(w)),
            },
            AnyDestination::Registry(d) => match d.start_blob(repo, desc, mount_from).await? {
                Start::Mounted => Start::Mounted,
                Start::Write(w) => Start::Write(AnyWriter::Registry(w)),
            },
        })
    }

    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Verified>, CopyError> {
        either!(self, d => d.get_manifest(repo, reference).await)
    }

    fn parallel_puts(&self) -> bool {
        either!(self, d => d.parallel_puts())
    }

    async fn put_manifest(
        &self,
        repo: &str,
        put: Put<'_>,
        manifest: &Verified,
    ) -> Result<bool, CopyError> {
        either!(self, d => d.put_manifest(repo, put, manifest).await)
    }
}
