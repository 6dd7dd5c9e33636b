//! Where job records live beyond the process's memory, behind one small trait: a folder in
//! `CACHE_DIR` (jobs outlive a restart of this process) or Redis (`REDIS_URL`: every
//! replica sees every job, and a job whose replica died is taken over).
//!
//! Both stores give a running job a **claim** that only one process holds at a time, and
//! that frees itself when that process dies: in the folder an exclusive lock on the job's
//! lock file (the kernel drops it with the process), in Redis a lease the runner renews.
//! A job that is active but unclaimed is an orphan: [`Store::orphans`] claims them for the
//! process that asks, which resumes them.

use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use super::record::{JobRecord, RECORD_VERSION, now_ms, valid_id};

/// What [`Store::create`] found.
#[derive(Debug)]
pub enum Created {
    /// Recorded, and claimed by this process: run it.
    New,
    /// An active job of the same owner and identity: share it.
    Existing(Box<JobRecord>),
}

/// What [`Store::save`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Saved; the claim is renewed.
    Kept,
    /// The record is gone: cancelled (from any replica). Stop.
    Cancelled,
    /// Another process holds the claim now. Stop: it runs the job.
    Lost,
}

/// A store of job records shared beyond this process.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records `rec` as a new job claimed by this process, unless an active job of the same
    /// owner and identity is recorded: then that one. `None`: the store is unavailable (the
    /// job runs here, unrecorded).
    async fn create(&self, rec: &JobRecord) -> Option<Created>;
    /// The record of job `id` (a valid id), if any.
    async fn get(&self, id: &str) -> Option<JobRecord>;
    /// Every record, ended ones within JOB_TTL included.
    async fn list(&self) -> Vec<JobRecord>;
    /// Saves the progress of a job this process runs, renewing its claim.
    async fn save(&self, rec: &JobRecord) -> Saved;
    /// Saves an ended job (kept `ttl`, then forgotten) and drops its claim.
    async fn finish(&self, rec: &JobRecord, ttl: Duration);
    /// Saves a job this process stops running (shutdown) and drops its claim, so another
    /// process can resume it at once.
    async fn release(&self, rec: &JobRecord);
    /// Forgets job `id` (cancelled); whoever runs it stops at its next save.
    async fn remove(&self, rec: &JobRecord) -> bool;
    /// Whether the record is certainly gone (cancelled from another process); `false` when
    /// it is there or the store cannot tell.
    async fn is_gone(&self, rec: &JobRecord) -> bool;
    /// Active jobs nobody holds, each now claimed by this process.
    async fn orphans(&self) -> Vec<JobRecord>;
}

/// Job records as files in a folder (`CACHE_DIR/jobs`): `<id>.json`, replaced atomically
/// (written aside, then renamed), and `<id>.lock`, locked by the process running the job.
/// Two processes on one folder (an overlapping deploy) see each other's jobs, and the
/// second resumes what the first left when it exits or dies.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    ttl: Duration,
    /// The locks this process holds, by job id.
    held: Mutex<HashMap<String, File>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileStore {
    /// The store in `dir` (created if missing); ended records older than `ttl` are removed
    /// as they are found.
    ///
    /// # Errors
    /// The folder cannot be created.
    pub fn open(dir: &Path, ttl: Duration) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {}", dir.display(), e.kind()))?;
        Ok(FileStore {
            dir: dir.to_owned(),
            ttl,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn json(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    fn read(path: &Path) -> Option<JobRecord> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice::<JobRecord>(&bytes) {
            Ok(r) if r.v == RECORD_VERSION && valid_id(&r.id) => Some(r),
            _ => {
                tracing::warn!(path = %path.display(), "a job record that cannot be read is ignored");
                None
            }
        }
    }

    /// Writes `rec` atomically: a reader sees the old record or the new one, never half.
    fn write(&self, rec: &JobRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        let tmp = self
            .dir
            .join(format!("{}.json.tmp-{:016x}", rec.id, fastrand::u64(..)));
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.json(&rec.id)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Takes the claim on job `id`: its lock file, locked without waiting.
    fn try_claim(&self, id: &str) -> bool {
        if lock(&self.held).contains_key(id) {
            return false;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_file(id))
        else {
            return false;
        };
        match f.try_lock() {
            Ok(()) => {
                lock(&self.held).insert(id.to_owned(), f);
                true
            }
            Err(_) => false,
        }
    }

    fn drop_claim(&self, id: &str) {
        // Closing the file unlocks it.
        lock(&self.held).remove(id);
    }

    /// Every readable record; ended ones past JOB_TTL are removed on the way.
    fn scan(&self) -> Vec<JobRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let now = now_ms();
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let Some(rec) = Self::read(&e.path()) else {
                continue;
            };
            if rec.expired(self.ttl, now) {
                let _ = std::fs::remove_file(e.path());
                let _ = std::fs::remove_file(self.lock_file(id));
                continue;
            }
            out.push(rec);
        }
        out
    }

    fn blocking<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&FileStore) -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> {
        let this = std::sync::Arc::clone(self);
        async move { tokio::task::spawn_blocking(move || f(&this)).await.ok() }
    }
}

/// The file store behind the trait; all file work runs on Tokio's blocking pool.
#[derive(Debug)]
pub struct Files(pub std::sync::Arc<FileStore>);

#[async_trait::async_trait]
impl Store for Files {
    async fn create(&self, rec: &JobRecord) -> Option<Created> {
        let rec = rec.clone();
        self.0
            .blocking(move |s| {
                let same = s.scan().into_iter().find(|r| {
                    r.is_active() && r.owner == rec.owner && r.identity == rec.identity
                });
                if let Some(r) = same {
                    return Some(Created::Existing(Box::new(r)));
                }
                if !s.try_claim(&rec.id) {
                    return None;
                }
                match s.write(&rec) {
                    Ok(()) => Some(Created::New),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record a job in CACHE_DIR; it runs unrecorded");
                        s.drop_claim(&rec.id);
                        None
                    }
                }
            })
            .await
            .flatten()
    }

    async fn get(&self, id: &str) -> Option<JobRecord> {
        if !valid_id(id) {
            return None;
        }
        let id = id.to_owned();
        self.0
            .blocking(move |s| {
                FileStore::read(&s.json(&id)).filter(|r| !r.expired(s.ttl, now_ms()))
            })
            .await
            .flatten()
    }

    async fn list(&self) -> Vec<JobRecord> {
        self.0.blocking(FileStore::scan).await.unwrap_or_default()
    }

    async fn save(&self, rec: &JobRecord) -> Saved {
        let rec = rec.clone();
        self.0
            .blocking(move |s| {
                if !s.json(&rec.id).exists() {
                    s.drop_claim(&rec.id);
                    return Saved::Cancelled;
                }
                if let Err(e) = s.write(&rec) {
                    tracing::warn!(error = %e, job = %rec.id, "cannot save a job's progress");
                }
                Saved::Kept
            })
            .await
            .unwrap_or(Saved::Kept)
    }

    async fn finish(&self, rec: &JobRecord, _ttl: Duration) {
        let rec = rec.clone();
        self.0
            .blocking(move |s| {
                if s.json(&rec.id).exists()
                    && let Err(e) = s.write(&rec)
                {
                    tracing::warn!(error = %e, job = %rec.id, "cannot save an ended job");
                }
                s.drop_claim(&rec.id);
                let _ = std::fs::remove_file(s.lock_file(&rec.id));
            })
            .await;
    }

    async fn release(&self, rec: &JobRecord) {
        let rec = rec.clone();
        self.0
            .blocking(move |s| {
                if s.json(&rec.id).exists()
                    && let Err(e) = s.write(&rec)
                {
                    tracing::warn!(error = %e, job = %rec.id, "cannot save a suspended job");
                }
                s.drop_claim(&rec.id);
            })
            .await;
    }

    async fn remove(&self, rec: &JobRecord) -> bool {
        let id = rec.id.clone();
        self.0
            .blocking(move |s| {
                let existed = std::fs::remove_file(s.json(&id)).is_ok();
                s.drop_claim(&id);
                let _ = std::fs::remove_file(s.lock_file(&id));
                existed
            })
            .await
            .unwrap_or(false)
    }

    async fn is_gone(&self, rec: &JobRecord) -> bool {
        let id = rec.id.clone();
        self.0
            .blocking(move |s| !s.json(&id).exists())
            .await
            .unwrap_or(false)
    }

    async fn orphans(&self) -> Vec<JobRecord> {
        self.0
            .blocking(|s| {
                s.scan()
                    .into_iter()
                    .filter(|r| r.is_active() && s.try_claim(&r.id))
                    .collect()
            })
            .await
            .unwrap_or_default()
    }
}
