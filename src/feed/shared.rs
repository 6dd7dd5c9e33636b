//! The change feed between replicas (REDIS_URL): one replica polls each topic, holding a
//! lease, and writes the topic's log and last-seen records to Redis in one script; every
//! replica's mirror follows that log, so a subscriber of any replica sees the same events
//! under the same ids, and one that reconnects to another replica resumes from its id.
//!
//! Keys, under `kore-gateway:<account label>:feed:<topic id>:`: `epoch` (one life of the
//! log), `seq` (the last event's number), `log` (a sorted set of events by number),
//! `state` (a hash: record identity → start, digest, bytes), `ready` (a complete poll was
//! made), `warning` and `warnings` (the last warning and their count), `lease` (the
//! polling replica). Every key expires FEED_RETENTION after the last poll.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use redis::{Script, Value};
use serde_json::value::RawValue;

use super::{
    id::RecordKey,
    topic::{Event, Kind, Known, Mirror, Msg, Topic},
};
use crate::{cluster::Cluster, drain::Stop};

/// How often a replica reads the shared log: events reach its subscribers within this.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Appends one poll's changes if this replica still holds the lease. KEYS: lease, seq, log,
/// state, ready, warning, warnings, epoch; ARGV: replica, complete (0/1), trim-through seq,
/// ttl ms, then per change (count first): kind, start, id, digest, raw, at ms; then the
/// identities to forget (count first); then the warning ('' for none). Returns the last
/// seq, or -1 when the lease is another replica's.
const APPEND_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local announce = redis.call('EXISTS', KEYS[5]) == 1
local ttl = tonumber(ARGV[4])
local i = 6
local n = tonumber(ARGV[5])
for c = 1, n do
  local kind, start, id, digest, raw, at = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  i = i + 6
  -- What the shared state already holds is not news (a poll compared against an older
  -- picture, e.g. right after a takeover).
  local held = redis.call('HGET', KEYS[4], id)
  local same = false
  if held then
    local a = string.find(held, '\n', 1, true)
    if a and string.sub(held, a + 1, a + #digest) == digest then same = true end
  end
  if not same then
    if announce then
      local seq = redis.call('INCR', KEYS[2])
      redis.call('ZADD', KEYS[3], seq, seq .. '\n' .. at .. '\n' .. kind .. '\n' .. start .. '\n' .. digest .. '\n' .. #id .. '\n' .. id .. raw)
    end
    redis.call('HSET', KEYS[4], id, start .. '\n' .. digest .. '\n' .. raw)
  end
end
local m = tonumber(ARGV[i])
i = i + 1
for c = 1, m do
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1
end
if ARGV[2] == '1' then redis.call('SET', KEYS[5], '1') end
local trim = tonumber(ARGV[3])
if trim > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', trim) end
if ARGV[i] ~= '' then
  local w = redis.call('INCR', KEYS[7])
  redis.call('SET', KEYS[6], w .. '\n' .. ARGV[i])
end
for k = 2, 8 do redis.call('PEXPIRE', KEYS[k], ttl) end
return tonumber(redis.call('GET', KEYS[2]) or '0')
";

/// Everything a mirror is loaded from, read at one instant. KEYS: epoch, seq, log, state,
/// ready; ARGV: a new epoch, set if there is none, ttl ms.
const LOAD_LUA: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2]))
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0', redis.call('EXISTS', KEYS[5]), redis.call('HGETALL', KEYS[4]), redis.call('ZRANGE', KEYS[3], 0, -1)}
";

struct Keys {
    epoch: String,
    seq: String,
    log: String,
    state: String,
    ready: String,
    warning: String,
    warnings: String,
    lease: String,
}

/// One topic's shared log, as one replica reads and (holding the lease) writes it.
pub struct SharedTopic {
    cluster: Arc<Cluster>,
    keys: Keys,
    append: Script,
    load: Script,
    /// This replica holds the lease.
    polling: AtomicBool,
    last_poll: Mutex<Option<tokio::time::Instant>>,
    /// The count of warnings already passed on.
    warnings_seen: AtomicU64,
    /// When Redis was last found unreachable (a warning at most once per interval).
    unreachable_said: Mutex<Option<tokio::time::Instant>>,
    /// The mirror was loaded from Redis at least once.
    loaded: AtomicBool,
}

impl SharedTopic {
    pub fn new(cluster: Arc<Cluster>, label: &str, topic: &str) -> Self {
        let key = |name: &str| Cluster::key(label, &format!("feed:{topic}:{name}"));
        SharedTopic {
            keys: Keys {
                epoch: key("epoch"),
                seq: key("seq"),
                log: key("log"),
                state: key("state"),
                ready: key("ready"),
                warning: key("warning"),
                warnings: key("warnings"),
                lease: key("lease"),
            },
            cluster,
            append: Script::new(APPEND_LUA),
            load: Script::new(LOAD_LUA),
            polling: AtomicBool::new(false),
            last_poll: Mutex::new(None),
            warnings_seen: AtomicU64::new(0),
            unreachable_said: Mutex::new(None),
            loaded: AtomicBool::new(false),
        }
    }

    /// This replica polls the topic.
    pub fn is_poller(&self) -> bool {
        self.polling.load(Ordering::Relaxed)
    }

    fn ttl_ms(topic: &Topic) -> u64 {
        (topic.settings.retention + topic.settings.interval * 2).as_millis() as u64
    }

    /// One round: follow the shared log; poll when this replica holds (or takes) the lease
    /// and the interval has passed.
    pub async fn round(&self, topic: &Topic, stop: &Stop) {
        if !self.follow(topic).await {
            return;
        }
        let interval = topic.settings.interval;
        let due = self
            .last_poll
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= interval);
        if !due {
            return;
        }
        if !self.take_lease(topic).await {
            self.polling.store(false, Ordering::Relaxed);
            return;
        }
        self.polling.store(true, Ordering::Relaxed);
        *self.last_poll.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
        let state = topic.lock().state.clone();
        // A poll waits as long as the budget needs: the lease is renewed meanwhile, so no
        // other replica polls the same windows at the same time.
        let polled = {
            let poll = topic.fetch_changes(stop, &state);
            tokio::pin!(poll);
            let every = Self::lease_ttl(topic) / 3;
            loop {
                tokio::select! {
                    p = &mut poll => break p,
                    () = tokio::time::sleep(every) => {
                        if !self.take_lease(topic).await {
                            tracing::warn!(topic = %topic.id, "the feed's poller lease was lost during a poll");
                        }
                    }
                }
            }
        };
        self.write(topic, &polled, &state).await;
        topic.report(&polled, true);
        self.follow(topic).await;
    }

    /// Takes the lease, or renews it if this replica holds it.
    fn lease_ttl(topic: &Topic) -> Duration {
        (topic.settings.interval * 3).max(Duration::from_secs(10))
    }

    async fn take_lease(&self, topic: &Topic) -> bool {
        let ttl = Self::lease_ttl(topic);
        let mut conn = self.cluster.conn();
        let me = self.cluster.replica();
        let taken: Option<Option<String>> = self
            .cluster
            .run(
                redis::cmd("SET")
                    .arg(&self.keys.lease)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
        match taken {
            Some(Some(_)) => true,
            Some(None) => {
                let holder: Option<Option<String>> = self
                    .cluster
                    .run(
                        redis::cmd("GET")
                            .arg(&self.keys.lease)
                            .query_async(&mut conn),
                    )
                    .await;
                if holder.flatten().as_deref() == Some(me) {
                    let _: Option<i64> = self
                        .cluster
                        .run(
                            redis::cmd("PEXPIRE")
                                .arg(&self.keys.lease)
                                .arg(ttl.as_millis() as u64)
                                .query_async(&mut conn),
                        )
                        .await;
                    true
                } else {
                    false
                }
            }
            None => false,
        }
    }

    /// Writes one poll (the changes against `state`, what to forget, what to trim, the
    /// warning) in one script, if the lease is still this replica's.
    async fn write(
        &self,
        topic: &Topic,
        polled: &super::topic::Polled,
        state: &HashMap<Arc<str>, Known>,
    ) {
        let now_ms = Timestamp::now().as_millisecond();
        let complete = polled.warnings.is_empty();
        let forget: Vec<&Arc<str>> = if complete {
            state
                .iter()
                .filter(|(_, k)| k.start < polled.horizon)
                .map(|(id, _)| id)
                .collect()
        } else {
            Vec::new()
        };
        let trim_through = {
            let m = topic.lock();
            let oldest = now_ms - topic.settings.retention.as_millis() as i64;
            m.log
                .iter()
                .take_while(|e| e.at_ms < oldest)
                .last()
                .map_or(0, |e| e.seq)
        };
        let mut inv = self.append.prepare_invoke();
        for k in [
            &self.keys.lease,
            &self.keys.seq,
            &self.keys.log,
            &self.keys.state,
            &self.keys.ready,
            &self.keys.warning,
            &self.keys.warnings,
            &self.keys.epoch,
        ] {
            inv.key(k);
        }
        inv.arg(self.cluster.replica())
            .arg(if complete { "1" } else { "0" })
            .arg(trim_through)
            .arg(Self::ttl_ms(topic))
            .arg(polled.changes.len());
        for (kind, known, id) in &polled.changes {
            inv.arg(kind.as_str())
                .arg(known.start)
                .arg(id.as_bytes())
                .arg(crate::cache::hex(&known.digest))
                .arg(known.raw.get())
                .arg(now_ms);
        }
        inv.arg(forget.len());
        for id in forget {
            inv.arg(id.as_bytes());
        }
        inv.arg(polled.warnings.join("; "));
        let mut conn = self.cluster.conn();
        let written: Option<i64> = self.cluster.run(inv.invoke_async(&mut conn)).await;
        match written {
            Some(-1) => self.polling.store(false, Ordering::Relaxed),
            Some(_) => {}
            None => topic.warn(
                "the shared change log (Redis) is unreachable: this poll's changes are not announced, and the next poll finds them again",
            ),
        }
    }

    /// Brings the mirror up to the shared log: a full load on first use, when the log's
    /// epoch changed (subscribers then start over) and when the first complete poll has
    /// been made (its records are in `state`, not in the log), else the events after the
    /// last one. Returns whether Redis answered.
    async fn follow(&self, topic: &Topic) -> bool {
        let epoch_now = topic.lock().epoch.clone();
        let mut conn = self.cluster.conn();
        let current: Option<Option<String>> = self
            .cluster
            .run(
                redis::cmd("GET")
                    .arg(&self.keys.epoch)
                    .query_async(&mut conn),
            )
            .await;
        let Some(current) = current else {
            self.unreachable(topic);
            return false;
        };
        if !self.loaded.load(Ordering::Relaxed) || current.as_deref() != Some(epoch_now.as_str()) {
            return self.load(topic).await;
        }
        let (last, ready) = {
            let m = topic.lock();
            (m.last_seq, m.ready)
        };
        if !ready {
            let r: Option<i64> = self
                .cluster
                .run(
                    redis::cmd("EXISTS")
                        .arg(&self.keys.ready)
                        .query_async(&mut conn),
                )
                .await;
            if r == Some(1) {
                // The first complete poll learnt the records into `state` without an
                // event (nothing is announced before it): only a load brings them here.
                return self.load(topic).await;
            }
        }
        let members: Option<Vec<Vec<u8>>> = self
            .cluster
            .run(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.keys.log)
                    .arg(format!("({last}"))
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await;
        let Some(members) = members else {
            self.unreachable(topic);
            return false;
        };
        if !members.is_empty() {
            let mut m = topic.lock();
            for raw in members {
                if let Some((e, digest)) = parse_event(&raw)
                    && e.seq > m.last_seq
                {
                    topic.record_event(&mut m, e, digest);
                }
            }
            m.trim(Timestamp::now().as_millisecond(), topic.settings.retention);
        }
        {
            // Records an hour before the watched part are no longer followed by any poller:
            // let them go here as the poller lets them go in Redis.
            let (horizon, _) =
                super::topic::watched(Timestamp::now(), topic.settings.lookback, &topic.spec.tz);
            let keep_from = horizon.as_second() - 3600;
            topic.lock().state.retain(|_, k| k.start >= keep_from);
        }
        self.pass_warnings(topic, &mut conn).await;
        true
    }

    /// The warnings the poller wrote since the last round, to this replica's subscribers.
    async fn pass_warnings(&self, topic: &Topic, conn: &mut redis::aio::ConnectionManager) {
        let n: Option<Option<u64>> = self
            .cluster
            .run(redis::cmd("GET").arg(&self.keys.warnings).query_async(conn))
            .await;
        let n = n.flatten().unwrap_or(0);
        let seen = self.warnings_seen.swap(n, Ordering::Relaxed);
        if n > seen {
            let w: Option<Option<String>> = self
                .cluster
                .run(redis::cmd("GET").arg(&self.keys.warning).query_async(conn))
                .await;
            if let Some(Some(w)) = w {
                let text = w.split_once('\n').map_or(w.as_str(), |(_, t)| t);
                topic.warn(text);
            }
        }
    }

    /// Loads the whole mirror at one instant.
    async fn load(&self, topic: &Topic) -> bool {
        let fresh_epoch = crate::cache::hex(&crate::telemetry::random_bytes::<8>());
        let mut conn = self.cluster.conn();
        let loaded: Option<Value> = self
            .cluster
            .run(
                self.load
                    .key(&self.keys.epoch)
                    .key(&self.keys.seq)
                    .key(&self.keys.log)
                    .key(&self.keys.state)
                    .key(&self.keys.ready)
                    .arg(&fresh_epoch)
                    .arg(Self::ttl_ms(topic))
                    .invoke_async(&mut conn),
            )
            .await;
        let Some(Value::Array(parts)) = loaded else {
            self.unreachable(topic);
            return false;
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        };
        let (
            Some(epoch),
            Some(seq),
            Some(Value::Int(ready)),
            Some(Value::Array(state)),
            Some(Value::Array(log)),
        ) = (
            parts.first().and_then(text),
            parts
                .get(1)
                .and_then(text)
                .and_then(|s| s.parse::<u64>().ok()),
            parts.get(2),
            parts.get(3),
            parts.get(4),
        )
        else {
            return false;
        };
        let mut mirror = Mirror::new(epoch);
        for pair in state.chunks(2) {
            if let [Value::BulkString(id), Value::BulkString(v)] = pair
                && let (Ok(id), Some(known)) = (std::str::from_utf8(id), parse_state(v))
            {
                mirror.state.insert(Arc::from(id), known);
            }
        }
        let mut events = Vec::new();
        for m in log {
            if let Value::BulkString(b) = m
                && let Some((e, _)) = parse_event(b)
            {
                events.push(Arc::new(e));
            }
        }
        events.sort_by_key(|e| e.seq);
        mirror.trimmed_through = events.first().map_or(seq, |e| e.seq.saturating_sub(1));
        mirror.last_seq = seq;
        mirror.log_bytes = events.iter().map(|e| e.raw.get().len()).sum();
        mirror.log = events.into();
        let was_loaded = self.loaded.swap(true, Ordering::Relaxed);
        {
            let mut m = topic.lock();
            let same_life = m.epoch == mirror.epoch;
            mirror.ready = *ready == 1;
            // Subscribers that open next wait until the new picture is complete.
            topic.replace(&mut m, mirror);
            if was_loaded && !same_life {
                // Another life of the log: what subscribers hold means nothing in it.
                let _ = topic.tx.send(Msg::Reset);
            }
        }
        // Warnings from before this replica followed are not passed on.
        let n: Option<Option<u64>> = self
            .cluster
            .run(
                redis::cmd("GET")
                    .arg(&self.keys.warnings)
                    .query_async(&mut conn),
            )
            .await;
        self.warnings_seen
            .store(n.flatten().unwrap_or(0), Ordering::Relaxed);
        true
    }

    fn unreachable(&self, topic: &Topic) {
        let mut said = self
            .unreachable_said
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if said.is_none_or(|t| t.elapsed() >= topic.settings.interval) {
            *said = Some(tokio::time::Instant::now());
            topic.warn(
                "the shared change log (Redis) is unreachable; events resume when it is back",
            );
        }
    }

    /// Lets the lease go (nobody listens here any more).
    pub fn give_up(&self, _topic: &str) {
        if !self.polling.swap(false, Ordering::Relaxed) {
            return;
        }
        let cluster = Arc::clone(&self.cluster);
        let lease = self.keys.lease.clone();
        tokio::spawn(async move {
            let mut conn = cluster.conn();
            let me = cluster.replica().to_owned();
            let holder: Option<Option<String>> = cluster
                .run(redis::cmd("GET").arg(&lease).query_async(&mut conn))
                .await;
            if holder.flatten().as_deref() == Some(me.as_str()) {
                let _: Option<i64> = cluster
                    .run(redis::cmd("DEL").arg(&lease).query_async(&mut conn))
                    .await;
            }
        });
    }
}

/// `seq \n at \n kind \n start \n digest \n idlen \n id raw`.
fn parse_event(b: &[u8]) -> Option<(Event, [u8; 16])> {
    let mut rest = b;
    let mut fields = [""; 6];
    for f in &mut fields {
        let nl = rest.iter().position(|&c| c == b'\n')?;
        *f = std::str::from_utf8(&rest[..nl]).ok()?;
        rest = &rest[nl + 1..];
    }
    let [seq, at, kind, start, digest, idlen] = fields;
    let idlen: usize = idlen.parse().ok()?;
    if rest.len() < idlen {
        return None;
    }
    let (id, raw) = rest.split_at(idlen);
    let raw: Box<RawValue> = serde_json::from_slice::<&RawValue>(raw)
        .ok()
        .map(RawValue::to_owned)?;
    Some((
        Event {
            seq: seq.parse().ok()?,
            at_ms: at.parse().ok()?,
            kind: Kind::parse(kind)?,
            key: RecordKey {
                start: start.parse().ok()?,
                id: Arc::from(std::str::from_utf8(id).ok()?),
            },
            raw: Arc::from(raw),
        },
        unhex16(digest)?,
    ))
}

/// `start \n digest \n raw`.
fn parse_state(b: &[u8]) -> Option<Known> {
    let mut parts = b.splitn(3, |&c| c == b'\n');
    let start = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let digest = unhex16(std::str::from_utf8(parts.next()?).ok()?)?;
    let raw: Box<RawValue> = serde_json::from_slice::<&RawValue>(parts.next()?)
        .ok()
        .map(RawValue::to_owned)?;
    Some(Known {
        start,
        digest,
        raw: Arc::from(raw),
    })
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut d = [0u8; 16];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_states_read_back_as_the_script_writes_them() {
        let id = "66f4\nodd id";
        let raw = r#"{"sessionId":"x","finalStatus":"Dropped"}"#;
        let member = format!(
            "7\n1700000000000\nupdated\n1727000000\n{}\n{}\n{id}{raw}",
            "ab".repeat(16),
            id.len()
        );
        let (e, digest) = parse_event(member.as_bytes()).expect("parses");
        assert_eq!(
            (e.seq, e.at_ms, e.kind),
            (7, 1_700_000_000_000, Kind::Updated)
        );
        assert_eq!((e.key.start, &*e.key.id), (1_727_000_000, id));
        assert_eq!(e.raw.get(), raw);
        assert_eq!(digest, [0xab; 16]);
        let state = format!("-5\n{}\n{raw}", "0f".repeat(16));
        let k = parse_state(state.as_bytes()).expect("parses");
        assert_eq!((k.start, k.digest, k.raw.get()), (-5, [0x0f; 16], raw));
        assert!(parse_event(b"1\n2\nnope\n3\n00\n0\n{}").is_none());
        assert!(parse_state(b"1\nzz\n{}").is_none());
    }
}
