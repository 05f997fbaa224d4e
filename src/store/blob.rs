//! Streaming a blob into the pool: bytes go to `.tmp/<algo>-<hex>.part`, are hashed as
//! they are written, and the file is renamed into `.blobs/` only once its size and digest
//! match. A `.part` left by a crash is resumed (its bytes re-hashed) by the next writer.
//!
//! The `.part` file is also the claim: whoever holds its exclusive `flock` is the one
//! writer of that blob across all processes sharing the store.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::atomic::sync_dir;
use super::modes::FILE_MODE;
use super::{Result, Store, StoreError};
use crate::crashpoint;
use crate::reference::Digest;

const WRITE_BUFFER: usize = 1 << 20;

/// What `Store::claim_blob` found.
#[derive(Debug)]
pub enum BlobClaim {
    /// The pool already has the blob (maybe written by a concurrent fetch meanwhile).
    Present,
    /// This caller is the writer; `offset()` says how much a previous attempt left.
    Write(Box<PartialBlob>),
}

/// An exclusive, resumable writer of one blob.
#[derive(Debug)]
pub struct PartialBlob {
    /// Buffered: network chunks are small, and one write per chunk costs system time.
    file: BufWriter<File>,
    path: PathBuf,
    pool: PathBuf,
    digest: Digest,
    size: u64,
    hasher: Sha256,
    written: u64,
}

impl Store {
    /// Become the writer of `digest` (blocking while another process writes it), or learn
    /// that it is already in the pool. Call from a blocking thread.
    pub fn claim_blob(&self, digest: &Digest, size: u64) -> Result<BlobClaim> {
        let pool = self.pool_path(digest)?;
        let path = self
            .tmp_dir()
            .join(format!("{}-{}.part", digest.algorithm(), digest.hex()));
        loop {
            if pool.is_file() {
                return Ok(BlobClaim::Present);
            }
            let file = File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                // Renamed into the pool as it is: created with a published file's mode.
                .mode(FILE_MODE)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            file.lock().map_err(StoreError::io("lock", &path))?;
            // The previous holder may have renamed this inode into the pool or deleted
            // it; only a lock on the inode still at `path` is a claim.
            let held = file.metadata().map_err(StoreError::io("stat", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            }
            if pool.is_file() {
                // Finished by someone else after our first check; drop our empty claim.
                let _ = fs::remove_file(&path);
                return Ok(BlobClaim::Present);
            }
            let mut partial = PartialBlob {
                file: BufWriter::with_capacity(WRITE_BUFFER, file),
                path,
                pool,
                digest: digest.clone(),
                size,
                hasher: Sha256::new(),
                written: 0,
            };
            partial.resume()?;
            return Ok(BlobClaim::Write(Box::new(partial)));
        }
    }
}

impl PartialBlob {
    /// Bytes already written (by this or an interrupted earlier attempt); download from here.
    pub fn offset(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Re-hash what an earlier attempt left so the download can continue with Range.
    fn resume(&mut self) -> Result<()> {
        let file = self.file.get_mut();
        let len = file
            .metadata()
            .map_err(StoreError::io("stat", &self.path))?
            .len();
        if len == 0 {
            return Ok(());
        }
        if len > self.size {
            return self.restart();
        }
        let mut buf = vec![0u8; 1 << 20];
        file.seek(SeekFrom::Start(0))
            .map_err(StoreError::io("seek", &self.path))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(StoreError::io("read", &self.path))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
        tracing::debug!("resuming {} at byte {}", self.digest, self.written);
        Ok(())
    }

    /// Throw away what was written (the server ignored our Range request).
    pub fn restart(&mut self) -> Result<()> {
        // Flushing what is buffered first keeps the file position and length in step.
        self.file
            .flush()
            .and_then(|()| self.file.get_ref().set_len(0))
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(StoreError::io("truncate", &self.path))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Append bytes, refusing to grow past the size the descriptor promised.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let total = self.written + chunk.len() as u64;
        if total > self.size {
            let err = StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: total,
            };
            self.discard();
            return Err(err);
        }
        if let Err(e) = self.file.write_all(chunk) {
            let err = StoreError::io("write", &self.path)(e);
            if err.is_disk_full() {
                // Keeping the part would only hold on to the space that ran out.
                self.discard();
            }
            return Err(err);
        }
        self.hasher.update(chunk);
        self.written = total;
        // Bytes still in the buffer die with the process, as they would on a SIGKILL.
        crashpoint::reached("blob-bytes", total);
        Ok(())
    }

    /// Check size and digest, make the bytes durable and move them into the pool. On a
    /// mismatch the partial file is deleted: its bytes can never become the blob.
    pub fn commit(mut self) -> Result<()> {
        if self.written != self.size {
            // Short: the caller may resume later, so the bytes stay.
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = Digest::sha256_finish(self.hasher.clone());
        if actual != self.digest {
            let expected = self.digest.clone();
            self.discard();
            return Err(StoreError::DigestMismatch { expected, actual });
        }
        if let Err(e) = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all())
        {
            let err = StoreError::io("sync", &self.path)(e);
            if err.is_disk_full() {
                self.discard();
            }
            return Err(err);
        }
        crashpoint::hit("blob-synced");
        fs::rename(&self.path, &self.pool)
            .map_err(StoreError::io("rename into pool", &self.pool))?;
        sync_dir(self.pool.parent().expect("pool path has a parent"))?;
        crashpoint::hit("blob-pooled");
        Ok(())
    }

    fn discard(&mut self) {
        let _ = fs::remove_file(&self.path);
        self.written = 0;
        self.hasher = Sha256::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn writer(store: &Store, d: &Digest, size: u64) -> PartialBlob {
        match store.claim_blob(d, size).unwrap() {
            BlobClaim::Write(w) => *w,
            BlobClaim::Present => panic!("unexpectedly present"),
        }
    }

    #[test]
    fn interrupted_write_resumes_and_commits() {
        let (_dir, store) = store();
        let data = b"0123456789abcdef";
        let d = Digest::sha256_of(data);
        let mut w = writer(&store, &d, data.len() as u64);
        w.write(&data[..7]).unwrap();
        drop(w); // as if the process died here
        let mut w = writer(&store, &d, data.len() as u64);
        assert_eq!(w.offset(), 7);
        w.write(&data[7..]).unwrap();
        w.commit().unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), data);
        assert!(matches!(
            store.claim_blob(&d, 16).unwrap(),
            BlobClaim::Present
        ));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn wrong_bytes_are_never_published() {
        let (_dir, store) = store();
        let d = Digest::sha256_of(b"good");
        let mut w = writer(&store, &d, 4);
        w.write(b"evil").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
        assert!(!store.has_blob(&d).unwrap());
        let mut w = writer(&store, &d, 4);
        assert_eq!(w.offset(), 0, "bad bytes must not be resumed");
        assert!(matches!(
            w.write(b"toolong"),
            Err(StoreError::SizeMismatch { .. })
        ));
    }
}
