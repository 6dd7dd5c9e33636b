//! The job records and the folder store, without a gateway around them.

use std::{sync::Arc, time::Duration};

use super::{
    JobState,
    record::{JobRecord, RECORD_VERSION, StoredFilters, valid_id},
    store::{Created, FileStore, Files, Saved, Store},
};

fn record(id: &str, owner: &str, identity: &str) -> JobRecord {
    JobRecord {
        v: RECORD_VERSION,
        id: id.to_owned(),
        owner: owner.to_owned(),
        account: "acct:0123456789ab".into(),
        identity: identity.to_owned(),
        result: "/v1/interactions?from=2024-01-01&to=2024-01-31".into(),
        refresh: false,
        filters: StoredFilters::default(),
        windows: vec![
            [1_704_067_200, 1_704_671_999, 0],
            [1_704_672_000, 1_705_276_799, 0],
        ],
        done: vec![true, false],
        created_ms: 1,
        state: JobState::Running,
        calls_done: 7,
        calls_estimated: 14,
        eta_seconds: Some(30),
        updated_ms: super::record::now_ms(),
        ended_ms: None,
        error: None,
    }
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kore-jobs-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const ID_A: &str = "0123456789abcdef0123456789abcdef";
const ID_B: &str = "fedcba9876543210fedcba9876543210";

#[test]
fn job_ids_are_checked_before_they_reach_a_store() {
    assert!(valid_id(ID_A));
    for bad in [
        "",
        "../../etc/passwd",
        "0123456789ABCDEF0123456789abcdef",
        "0123456789abcdef0123456789abcde",
        "0123456789abcdef0123456789abcdeg",
    ] {
        assert!(!valid_id(bad), "{bad}");
    }
}

#[test]
fn a_recorded_view_ages_its_eta_and_never_shows_fewer_estimated_than_done() {
    let mut r = record(ID_A, "team-a", "x");
    r.updated_ms -= 10_000;
    let v = r.view(super::record::now_ms());
    assert_eq!(v.eta_seconds, Some(20));
    assert_eq!(v.progress.windows_done, 1);
    assert_eq!(v.progress.windows_total, 2);
    r.calls_estimated = 3;
    assert_eq!(r.view(super::record::now_ms()).progress.calls_estimated, 7);
    r.state = JobState::Done;
    let done = r.view(super::record::now_ms());
    assert_eq!(done.eta_seconds, Some(0));
    assert_eq!(done.result.as_deref(), Some(r.result.as_str()));
}

#[tokio::test]
async fn a_folder_store_shares_jobs_and_hands_over_claims() {
    let d = dir("claims");
    let ttl = Duration::from_secs(3600);
    // Two processes on one folder (an overlapping deploy), as two stores.
    let a = Files(Arc::new(FileStore::open(&d, ttl).unwrap()));
    let b = Files(Arc::new(FileStore::open(&d, ttl).unwrap()));
    let job = record(ID_A, "team-a", "same request");
    assert!(matches!(a.create(&job).await, Some(Created::New)));
    // An identical request of the same key joins it; another key's does not.
    let twin = record(ID_B, "team-a", "same request");
    match b.create(&twin).await {
        Some(Created::Existing(r)) => assert_eq!(r.id, ID_A),
        other => panic!("expected the existing job, got {other:?}"),
    }
    assert_eq!(b.get(ID_A).await.map(|r| r.owner), Some("team-a".into()));
    // A holds the claim: B finds no orphan.
    assert!(b.orphans().await.is_empty());
    assert_eq!(a.save(&job).await, Saved::Kept);
    // A stops (a shutdown): B claims it at its next sweep, and only once.
    a.release(&job).await;
    let taken = b.orphans().await;
    assert_eq!(taken.len(), 1);
    assert!(b.orphans().await.is_empty());
    assert!(a.orphans().await.is_empty(), "B holds it now");
    // Cancelled from A: B's next save says so.
    assert!(a.remove(&job).await);
    assert_eq!(b.save(&job).await, Saved::Cancelled);
    assert!(b.get(ID_A).await.is_none());
    std::fs::remove_dir_all(&d).ok();
}

#[tokio::test]
async fn a_claim_is_freed_when_its_holder_is_gone() {
    let d = dir("dead");
    let ttl = Duration::from_secs(3600);
    let job = record(ID_A, "team-a", "q");
    {
        let a = Files(Arc::new(FileStore::open(&d, ttl).unwrap()));
        assert!(matches!(a.create(&job).await, Some(Created::New)));
        let b = Files(Arc::new(FileStore::open(&d, ttl).unwrap()));
        assert!(b.orphans().await.is_empty());
        // `a` dropped without releasing: its lock goes with it (as with a killed process).
    }
    let c = Files(Arc::new(FileStore::open(&d, ttl).unwrap()));
    let resumed = c.orphans().await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].done, vec![true, false], "where it stopped");
    std::fs::remove_dir_all(&d).ok();
}

#[tokio::test]
async fn ended_jobs_are_forgotten_after_job_ttl_and_unreadable_records_ignored() {
    let d = dir("ttl");
    let s = Files(Arc::new(
        FileStore::open(&d, Duration::from_millis(1)).unwrap(),
    ));
    let mut job = record(ID_A, "team-a", "q");
    assert!(matches!(s.create(&job).await, Some(Created::New)));
    job.state = JobState::Done;
    job.ended_ms = Some(super::record::now_ms() - 10);
    s.finish(&job, Duration::from_millis(1)).await;
    std::fs::write(d.join(format!("{ID_B}.json")), b"{ not json").unwrap();
    assert!(s.list().await.is_empty());
    assert!(s.get(ID_A).await.is_none());
    assert!(!d.join(format!("{ID_A}.json")).exists(), "removed");
    std::fs::remove_dir_all(&d).ok();
}
