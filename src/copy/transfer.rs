//! Blobs from a source to every destination that lacks them: present, mounted, or read
//! once and streamed to all writers chunk by chunk, each at its own pace (a slow one
//! from a spool file), resumed where an earlier run left a destination's part.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::BoxStream;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::{
    BlobWriter, CHUNK, Chunk, CopyError, Destination, Engine, Origin, SOURCE_RESUMES, Slot, Source,
    Start, bump, live,
};
use crate::manifest::Descriptor;
use crate::reference::Digest;
use crate::store::StoreError;

impl<S: Source, D: Destination> Engine<S, D> {
    /// One blob into every slot that lacks it: present (nothing), mounted, or sent, the
    /// bytes read from the source once for all slots that need them.
    pub(super) async fn copy_blob(&self, from: Origin<'_, S>, desc: &Descriptor, slots: &[&Slot]) {
        let mut slots = live(slots);
        // Claims taken in destination order, so that two images never wait on each
        // other's.
        slots.sort_by_key(|s| s.dest);
        let mut writers = Vec::new();
        let mut guards = Vec::new();
        for slot in slots {
            let dest = &self.dests[slot.dest];
            let counters = &self.counters[slot.dest];
            let mut held = self.holder(slot.dest, &desc.digest).lock_owned().await;
            if held.as_deref() == Some(slot.repo.as_str()) {
                bump(&counters.blobs_present, 1);
                continue;
            }
            match dest.has_blob(&slot.repo, &desc.digest).await {
                Ok(true) => {
                    bump(&counters.blobs_present, 1);
                    held.get_or_insert_with(|| slot.repo.clone());
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    slot.fail(Arc::new(e));
                    continue;
                }
            }
            // A repository of this destination known to hold it: one this run put it in,
            // else the source repository itself when source and destination are one
            // registry (a copy between its repositories sends no blob bytes).
            let registry = from.source.registry();
            let same_registry =
                registry.is_some() && registry == dest.registry() && slot.repo != from.repo;
            let mount = held.as_deref().or(same_registry.then_some(from.repo));
            match dest.start_blob(&slot.repo, desc, mount).await {
                Ok(Start::Mounted) => bump(&counters.blobs_mounted, 1),
                Ok(Start::Write(w)) => {
                    writers.push((slot, w));
                    guards.push(held);
                }
                Err(e) => slot.fail(Arc::new(e)),
            }
        }
        if writers.is_empty() {
            return;
        }
        let _permit = self.transfers.acquire().await.expect("never closed");
        let mut sent = self.transfer(from, desc, writers).await;
        // A part an earlier run left that did not verify is gone now: one clean try is
        // owed to what it was resumed for.
        let again: Vec<_> = sent
            .iter()
            .filter_map(|s| match s {
                Sent::Again(slot) => Some(*slot),
                _ => None,
            })
            .collect();
        if !again.is_empty() {
            self.reporter.warn(&format!(
                "blob {} resumed from an earlier run did not verify; downloading it again from the start",
                desc.digest
            ));
            let mut writers = Vec::new();
            for slot in again {
                match self.dests[slot.dest]
                    .start_blob(&slot.repo, desc, None)
                    .await
                {
                    Ok(Start::Write(w)) => writers.push((slot, w)),
                    Ok(Start::Mounted) => bump(&self.counters[slot.dest].blobs_mounted, 1),
                    Err(e) => slot.fail(Arc::new(e)),
                }
            }
            let retried = self.transfer(from, desc, writers).await;
            for s in &mut sent {
                if let Sent::Again(slot) = s {
                    let done = retried
                        .iter()
                        .any(|r| matches!(r, Sent::Done(d) if std::ptr::eq(*d, *slot)));
                    *s = if done { Sent::Done(slot) } else { Sent::Failed };
                }
            }
        }
        for (sent, mut held) in sent.into_iter().zip(guards) {
            if let Sent::Done(slot) = sent {
                held.get_or_insert_with(|| slot.repo.clone());
            }
        }
    }

    /// Read the blob from the source once and send it to every writer; returns, in
    /// writer order, the slots that got all of it. Each writer takes the chunks at its
    /// own pace: up to [`QUEUED_CHUNKS`] wait for it in memory, and while it is further
    /// behind than that (a slow target) the rest wait for it in a spool file, so the
    /// others go on at their speed. The source is read at the pace of the fastest.
    async fn transfer<'s>(
        &self,
        from: Origin<'_, S>,
        desc: &Descriptor,
        writers: Vec<(&'s Slot, D::Writer)>,
    ) -> Vec<Sent<'s>> {
        // Read from where the writer furthest behind stands (a part an earlier run left
        // is not read again); a writer further on skips what it has.
        let start = writers.iter().map(|(_, w)| w.offset()).min().unwrap_or(0);
        let verify = start == 0 && !writers.iter().all(|(_, w)| w.verifies());
        let chunk = writers
            .iter()
            .map(|(_, w)| w.chunk())
            .max()
            .unwrap_or(CHUNK);
        self.reporter.blob_started(&desc.digest, desc.size, start);
        let mut queues = Vec::with_capacity(writers.len());
        let mut receivers = Vec::with_capacity(writers.len());
        for (slot, _) in &writers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
            let budget = Arc::new(Semaphore::new(QUEUED_CHUNKS));
            queues.push((slot.dest, tx, budget.clone()));
            receivers.push(rx);
        }
        // Owns the queues: the writers' queues close when it ends, however it ends.
        let read = async move {
            let mut reader = SourceReader::new(from, desc, start, verify, chunk);
            let mut spool: Option<Spool> = None;
            loop {
                // Read on when the fastest writer can take more: a chunk it would only
                // have to spool for everyone is not worth reading yet.
                let ready: Vec<_> = queues
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, tx, _))| !tx.is_closed())
                    .map(|(i, (_, _, budget))| {
                        let budget = budget.clone();
                        Box::pin(async move { (i, budget.acquire_owned().await) })
                    })
                    .collect();
                if ready.is_empty() {
                    // Every writer failed (each said why): nobody wants the rest.
                    return Ok(());
                }
                let ((first, permit), _, _) = futures::future::select_all(ready).await;
                let mut permit = Some(permit.expect("never closed"));
                let chunk = match reader.next_chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => return Err(e),
                };
                self.reporter
                    .blob_progress(&desc.digest, chunk.len() as u64);
                if reader.done() {
                    reader.verify()?;
                    for (_, tx, _) in &queues {
                        let _ = tx.send(Piece::Last(chunk.clone()));
                    }
                    return Ok(());
                }
                let mut spooled = None;
                for (i, (dest, tx, budget)) in queues.iter().enumerate() {
                    let permit = match i == first {
                        true => permit.take(),
                        false => budget.clone().try_acquire_owned().ok(),
                    };
                    let piece = match permit {
                        Some(permit) => Piece::Memory(chunk.clone(), permit),
                        None => {
                            // Written once however many writers are behind.
                            let at = match spooled {
                                Some(at) => at,
                                None => {
                                    let s = match &mut spool {
                                        Some(s) => s,
                                        None => spool.insert(Spool::new().await?),
                                    };
                                    let at = s.append(chunk.clone()).await?;
                                    spooled = Some(at);
                                    at
                                }
                            };
                            bump(&self.counters[*dest].bytes_spooled, chunk.len() as u64);
                            Piece::Spooled {
                                spool: spool.as_ref().expect("made above").file.clone(),
                                at,
                                len: chunk.len(),
                            }
                        }
                    };
                    // A writer that failed has gone; its error is its slot's.
                    let _ = tx.send(piece);
                }
            }
            // A blob of no bytes: its one piece is empty.
            reader.verify()?;
            for (_, tx, _) in &queues {
                let _ = tx.send(Piece::Last(Chunk::default()));
            }
            Ok(())
        };
        let write = join_all(writers.into_iter().zip(receivers).map(|((slot, w), rx)| {
            let skip = w.offset() - start;
            self.write_pieces(slot, w, rx, &desc.digest, skip)
        }));
        let (read, written) = futures::join!(read, write);
        self.reporter.blob_finished(&desc.digest);
        if let Err(e) = read {
            let e = Arc::new(e);
            for sent in &written {
                if let Sent::Closed(slot) = sent {
                    slot.fail(e.clone());
                }
            }
        }
        written
            .into_iter()
            .map(|s| match s {
                Sent::Closed(_) => Sent::Failed,
                other => other,
            })
            .collect()
    }

    /// One writer's side of [`Self::transfer`]: its pieces in order (less the `skip`
    /// bytes it has already), then the last one with the digest. A queue closed before
    /// the last piece means the read failed (the caller says why).
    async fn write_pieces<'s>(
        &self,
        slot: &'s Slot,
        mut writer: D::Writer,
        mut pieces: tokio::sync::mpsc::UnboundedReceiver<Piece>,
        digest: &Digest,
        mut skip: u64,
    ) -> Sent<'s> {
        let resumed = writer.offset() > 0;
        let mut trim = |chunk: Chunk| {
            let n = skip.min(chunk.len() as u64);
            skip -= n;
            chunk.skip(n as usize)
        };
        while let Some(piece) = pieces.recv().await {
            let result = match piece {
                Piece::Memory(chunk, _permit) => {
                    let chunk = trim(chunk);
                    let n = chunk.len() as u64;
                    writer.write(chunk).await.map(|()| n)
                }
                Piece::Spooled { spool, at, len } => match Spool::read(spool, at, len).await {
                    Ok(chunk) => {
                        let chunk = trim(chunk);
                        let n = chunk.len() as u64;
                        writer.write(chunk).await.map(|()| n)
                    }
                    Err(e) => Err(e),
                },
                Piece::Last(chunk) => {
                    let chunk = trim(chunk);
                    let n = chunk.len() as u64;
                    let finished = writer.finish(digest, chunk).await;
                    // Sent, whether or not the destination took it.
                    self.sent(slot.dest, n);
                    return match finished {
                        Ok(()) => {
                            bump(&self.counters[slot.dest].blobs_uploaded, 1);
                            Sent::Done(slot)
                        }
                        Err(CopyError::Store(StoreError::DigestMismatch { .. })) if resumed => {
                            Sent::Again(slot)
                        }
                        Err(e) => {
                            slot.fail(Arc::new(e));
                            Sent::Failed
                        }
                    };
                }
            };
            match result {
                Ok(n) => self.sent(slot.dest, n),
                Err(e) => {
                    slot.fail(Arc::new(e));
                    return Sent::Failed;
                }
            }
        }
        Sent::Closed(slot)
    }
}

/// How one writer's side of a transfer ended.
enum Sent<'s> {
    /// All of the blob is at the slot.
    Done(&'s Slot),
    /// The slot failed (it says why).
    Failed,
    /// The read stopped before the end (the caller fails the slot with its error).
    Closed(&'s Slot),
    /// What an earlier run left did not verify, and is gone: worth one more try.
    Again(&'s Slot),
}

/// Chunks one writer may have in memory, queued or being sent (see `transfer`).
const QUEUED_CHUNKS: usize = 2;

/// A chunk on its way to one writer.
enum Piece {
    /// In memory; the permit is the writer's budget, given back when it is sent.
    Memory(Chunk, tokio::sync::OwnedSemaphorePermit),
    /// Waiting in the spool file, at `at`.
    Spooled {
        spool: Arc<std::fs::File>,
        at: u64,
        len: usize,
    },
    /// The end of the blob, read and verified.
    Last(Chunk),
}

/// Chunks a slow writer has not taken yet, in an unnamed temporary file (gone when the
/// last handle closes, a kill included).
struct Spool {
    file: Arc<std::fs::File>,
    len: u64,
}

impl Spool {
    async fn new() -> Result<Spool, CopyError> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .expect("spool task panicked")
            .map_err(|e| StoreError::io("create a spool file in", &std::env::temp_dir())(e))?;
        Ok(Spool {
            file: Arc::new(file),
            len: 0,
        })
    }

    /// Append `chunk`; where it starts.
    async fn append(&mut self, chunk: Chunk) -> Result<u64, CopyError> {
        use std::os::unix::fs::FileExt;
        let (file, at, n) = (self.file.clone(), self.len, chunk.len() as u64);
        tokio::task::spawn_blocking(move || {
            let mut pos = at;
            for part in chunk.parts() {
                file.write_all_at(part, pos)?;
                pos += part.len() as u64;
            }
            Ok(())
        })
        .await
        .expect("spool task panicked")
        .map_err(|e| StoreError::io("write a spool file in", &std::env::temp_dir())(e))?;
        self.len += n;
        Ok(at)
    }

    async fn read(file: Arc<std::fs::File>, at: u64, len: usize) -> Result<Chunk, CopyError> {
        use std::os::unix::fs::FileExt;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .expect("spool task panicked")
        .map_err(|e| StoreError::io("read a spool file in", &std::env::temp_dir())(e))?;
        Ok(Chunk::from(Bytes::from(bytes)))
    }
}

/// A source blob read in chunks, hashed on the way, resumed where it broke off.
struct SourceReader<'a, S> {
    from: Origin<'a, S>,
    desc: &'a Descriptor,
    stream: Option<BoxStream<'static, Result<Bytes, CopyError>>>,
    /// Bytes of the blob read so far.
    pos: u64,
    /// Bytes the open stream will send that were read already (a restart from 0).
    skip: u64,
    resumes: u32,
    /// `None` when the writers check the digest (or the read starts past 0).
    hasher: Option<Sha256>,
    /// Bytes a chunk holds.
    chunk: usize,
}

impl<'a, S: Source> SourceReader<'a, S> {
    fn new(
        from: Origin<'a, S>,
        desc: &'a Descriptor,
        start: u64,
        verify: bool,
        chunk: usize,
    ) -> Self {
        SourceReader {
            from,
            desc,
            stream: None,
            pos: start,
            skip: 0,
            resumes: 0,
            hasher: verify.then(Sha256::new),
            chunk,
        }
    }

    fn done(&self) -> bool {
        self.pos == self.desc.size
    }

    /// The next chunk (shorter at the end); `None` past the end.
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, CopyError> {
        let size = self.desc.size;
        let want = (size - self.pos).min(self.chunk as u64) as usize;
        let mut buf = Chunk::default();
        while buf.len() < want {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let read = self
                        .from
                        .source
                        .blob(self.from.repo, self.desc, self.pos)
                        .await?;
                    self.skip = self.pos.saturating_sub(read.offset);
                    self.stream.insert(read.stream)
                }
            };
            let broke = match stream.next().await {
                Some(Ok(mut bytes)) => {
                    let skip = self.skip.min(bytes.len() as u64);
                    self.skip -= skip;
                    let bytes = bytes.split_off(skip as usize);
                    let take = bytes.len().min(want - buf.len());
                    if let Some(h) = &mut self.hasher {
                        h.update(&bytes[..take]);
                    }
                    buf.push(bytes.slice(..take));
                    self.pos += take as u64;
                    if take < bytes.len() {
                        if self.pos == size {
                            return Err(CopyError::BlobTooLong {
                                digest: self.desc.digest.clone(),
                                size,
                            });
                        }
                        // The rest belongs to the next chunk: keep it for then.
                        let rest = bytes.slice(take..);
                        let tail = self.stream.take().expect("open");
                        self.stream = Some(
                            futures::stream::once(async { Ok(rest) })
                                .chain(tail)
                                .boxed(),
                        );
                    }
                    continue;
                }
                Some(Err(e)) => Some(e),
                None => None,
            };
            self.stream = None;
            if self.resumes == SOURCE_RESUMES {
                return Err(CopyError::BlobIncomplete {
                    digest: self.desc.digest.clone(),
                    got: self.pos,
                    size,
                    source: broke.map(Box::new),
                });
            }
            self.resumes += 1;
        }
        Ok((!buf.is_empty()).then_some(buf))
    }

    /// After the last chunk: the bytes read hash to the descriptor's digest.
    fn verify(&mut self) -> Result<(), CopyError> {
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let actual = Digest::sha256_finish(hasher);
        if actual == self.desc.digest {
            Ok(())
        } else {
            Err(CopyError::BlobDigest {
                digest: self.desc.digest.clone(),
                actual,
            })
        }
    }
}
