//! Summarising (pure, no I/O): the merged records of a range → counts and duration
//! statistics per group, for `GET /v1/interactions/summary`.
//!
//! It sits after [`merge`](crate::merge) in the pipeline, in place of the record renderer:
//! the same cached windows, the same de-duplicated records, but only numbers leave. Each
//! record's raw JSON is read once, into borrowed slices; nothing is copied that does not
//! have to be.
//!
//! The vendor documents the fields but not how to count them, so the meaning is fixed here:
//!
//! * **Time** (`day`, `hour`) comes from [`Record::start`], the instant of
//!   `sessionStartTime` (already placed with the offset of the window that fetched it),
//!   converted into the requested zone. A day is a civil date there. An hour is a civil
//!   hour *and* the offset in force, so a 25-hour fall-back day has 25 buckets
//!   (`2024-11-03T01:00-04:00` then `2024-11-03T01:00-05:00`) and a 23-hour spring-forward
//!   day has 23. Time buckets sort by instant, not by label.
//! * **Record fields**: `channel`, `bot` (`botId`), `finalStatus`, `smartStatus` are the
//!   top-level strings, kept byte for byte (an empty string is a value of its own);
//!   `direction` is the top-level `Direction`, or `customerinfo.Direction` when that is
//!   absent or empty; `disposition` is each entry of `dispositions`, so a record with two
//!   codes counts under both.
//! * **Segment fields**: a record's segments are its `destinations`. `queue` is a
//!   segment's `queueId`, `agent` its `respondingAgent.agentId`. A record counts once in
//!   every bucket one of its segments falls in (a transfer through two queues counts in
//!   both; a segment without a queue or agent falls in the `null` bucket), and a record
//!   without segments falls in the `null` bucket. With `queue` and `agent` both grouped,
//!   the pairs are taken segment by segment, never crossed.
//! * **Durations** (seconds) are per segment, from `respondingAgent`:
//!   `interactionDuration`, `firstResponseDuration`, `afterCallWorkDuration`; `queueWait`
//!   is `EnterTime` → `respondingAgent.assignedAt` (both local to the same offset, so the
//!   civil difference is the real one). A transferred conversation gives one value per
//!   answering segment; when grouped by `queue` or `agent`, a bucket takes only the values
//!   of its own segments. A value that is absent, not a JSON number, negative or not finite
//!   is skipped — never counted as 0 — so `count` in the statistics is the number of values.
//! * **Percentiles** are exact, by nearest rank: `pN` is the ⌈N/100 · n⌉-th smallest value,
//!   always one that occurred.
//! * **Missing values** of any grouping (no such field, not a string) form the `null`
//!   bucket, which sorts after every value. A record that is not a JSON object still counts,
//!   with every field missing, so `meta.total` matches `/v1/interactions`.
//!
//! The steps, one file each: `dimensions` (what can be grouped and measured, the parts of a
//! key), `fields` (reading them out of a raw record), `aggregate` (groups and their
//! statistics) and `output` (the JSON and CSV writers). `filter` reads the same fields to
//! select records by the same meanings (the record filters of both data routes).

mod aggregate;
mod dimensions;
mod fields;
mod filter;
mod output;
#[cfg(test)]
mod testing;

pub use aggregate::{Group, Stats, Summary, summarise, summarise_accounts};
pub use dimensions::{Dimension, KeyPart, MAX_GROUP_BY, Metric};
pub use filter::RecordFilter;
pub use output::{CSV_MISSING, GroupsJson, csv_header, to_csv};
