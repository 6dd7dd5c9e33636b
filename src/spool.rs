//! A streamed export's rendered bytes, kept in order until its status line can be sent.
//!
//! An NDJSON or CSV export says in its headers whether it is whole, so every window is
//! resolved before the first byte goes out. Holding the records of every window meanwhile
//! costs memory in proportion to the range (a year of a busy account is hundreds of MiB).
//! Instead each window is rendered as soon as it is resolved, in order, and its records are
//! let go; the rendered bytes wait here: in memory up to a bound, beyond it in an unnamed
//! temporary file, the way nginx buffers a large upstream answer to `proxy_temp_path`. The
//! memory one export holds is then bounded whatever its range, and the file is gone with
//! its handle, even after a `kill -KILL` (Linux `O_TMPFILE`).

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    path::PathBuf,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};

/// Bytes read back from the file per chunk of the body.
const READ_CHUNK: usize = 256 * 1024;

/// Rendered bytes in order: the first ones in memory, then (once the memory share is spent)
/// a temporary file, then, only if the file could not be written, memory again.
pub struct Spool {
    memory: Vec<Bytes>,
    memory_bytes: usize,
    memory_cap: usize,
    dir: PathBuf,
    file: Option<File>,
    /// Bytes written whole to the file.
    file_len: u64,
    /// After a failed write: the rest, in memory (an answer over a bound beats no answer;
    /// said once in the log).
    tail: Vec<Bytes>,
    spill_failed: bool,
    len: u64,
}

impl Spool {
    /// Keeps up to `memory_cap` bytes in memory, the rest in a temporary file in `dir`.
    pub fn new(memory_cap: usize, dir: PathBuf) -> Self {
        Spool {
            memory: Vec::new(),
            memory_bytes: 0,
            memory_cap,
            dir,
            file: None,
            file_len: 0,
            tail: Vec::new(),
            spill_failed: false,
            len: 0,
        }
    }

    /// Bytes held in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in the temporary file.
    pub fn spilled_bytes(&self) -> u64 {
        self.file_len
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes + self.tail.iter().map(Bytes::len).sum::<usize>()
    }

    /// Appends `bytes` after everything pushed before.
    pub async fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len() as u64;
        if self.spill_failed {
            self.tail.push(bytes);
            return;
        }
        if self.file.is_none() && self.memory_bytes + bytes.len() <= self.memory_cap {
            self.memory_bytes += bytes.len();
            self.memory.push(bytes);
            return;
        }
        let (file, dir, chunk) = (self.file.take(), self.dir.clone(), bytes.clone());
        let (file, written) = blocking(move || {
            let mut file = match file {
                Some(f) => f,
                None => match tempfile::tempfile_in(&dir) {
                    Ok(f) => f,
                    Err(e) => return (None, Err(e)),
                },
            };
            let written = file.write_all(&chunk);
            (Some(file), written)
        })
        .await
        .unwrap_or_else(|e| (None, Err(e)));
        self.file = file;
        match written {
            Ok(()) => self.file_len += bytes.len() as u64,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    dir = %self.dir.display(),
                    "could not buffer an export in a temporary file; holding the rest in memory"
                );
                // A part of this chunk may have reached the file: it is read back only up
                // to `file_len`, and the chunk goes whole to the tail.
                self.spill_failed = true;
                self.tail.push(bytes);
            }
        }
    }

    /// All of it as one buffer, when it is all in memory.
    pub fn whole(&self) -> Option<Bytes> {
        if self.file.is_some() || !self.tail.is_empty() {
            return None;
        }
        match self.memory.as_slice() {
            [] => Some(Bytes::new()),
            [one] => Some(one.clone()),
            parts => {
                let mut all = Vec::with_capacity(self.memory_bytes);
                for p in parts {
                    all.extend_from_slice(p);
                }
                Some(Bytes::from(all))
            }
        }
    }

    /// The bytes in order, as a body: the memory part, the file read back in chunks, the
    /// tail.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let memory = stream::iter(self.memory.into_iter().map(Ok));
        let tail = stream::iter(self.tail.into_iter().map(Ok));
        let start = self.file.map(|f| (f, 0u64, self.file_len));
        let file = stream::try_unfold(start, |state| async move {
            let Some((file, at, end)) = state else {
                return Ok(None);
            };
            if at >= end {
                return Ok(None);
            }
            let want = usize::try_from(end - at).map_or(READ_CHUNK, |left| left.min(READ_CHUNK));
            let (file, read) = blocking(move || {
                let mut file = file;
                let mut buf = vec![0; want];
                let read = file
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map(|()| buf);
                (file, read)
            })
            .await?;
            let buf = read?;
            let next = at + buf.len() as u64;
            Ok(Some((Bytes::from(buf), Some((file, next, end)))))
        });
        memory.chain(file).chain(tail)
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of distinct bytes, so any reordering or loss shows.
    fn chunks(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                let line = format!("{i:08} ");
                Bytes::from(line.repeat(size / line.len()))
            })
            .collect()
    }

    async fn read_all(spool: Spool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(spool.into_stream());
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("read back"));
        }
        out
    }

    #[tokio::test]
    async fn small_answers_stay_in_memory_whole() {
        let mut spool = Spool::new(1 << 20, std::env::temp_dir());
        let parts = chunks(10, 1000);
        for c in &parts {
            spool.push(c.clone()).await;
        }
        let expected = parts.concat();
        assert_eq!(spool.spilled_bytes(), 0);
        assert_eq!(spool.len(), expected.len() as u64);
        assert_eq!(spool.whole().as_deref(), Some(&expected[..]));
        assert_eq!(read_all(spool).await, expected);
    }

    #[tokio::test]
    async fn past_the_memory_share_the_rest_goes_to_a_file_and_comes_back_in_order() {
        let mut spool = Spool::new(10_000, std::env::temp_dir());
        // 3 MiB in all: the file part is read back in several chunks.
        let parts = chunks(300, 10_000);
        for c in &parts {
            spool.push(c.clone()).await;
        }
        let expected = parts.concat();
        assert!(spool.memory_bytes() <= 10_000, "{}", spool.memory_bytes());
        assert_eq!(
            spool.spilled_bytes() + spool.memory_bytes() as u64,
            expected.len() as u64
        );
        assert!(spool.spilled_bytes() > 2 * READ_CHUNK as u64);
        assert!(spool.whole().is_none());
        assert_eq!(read_all(spool).await, expected);
    }

    #[tokio::test]
    async fn without_a_writable_folder_it_keeps_everything_in_memory() {
        let dir = std::env::temp_dir().join(format!("kore-spool-missing-{}", std::process::id()));
        assert!(!dir.exists());
        let mut spool = Spool::new(5_000, dir);
        let parts = chunks(20, 1_000);
        for c in &parts {
            spool.push(c.clone()).await;
        }
        let expected = parts.concat();
        assert_eq!(spool.spilled_bytes(), 0);
        assert_eq!(spool.memory_bytes(), expected.len());
        assert_eq!(read_all(spool).await, expected);
    }
}
