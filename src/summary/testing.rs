//! Records for the summary's unit tests.

use std::borrow::Cow;

use jiff::Timestamp;
use serde_json::value::RawValue;

use super::Summary;
use crate::{merge::Record, plan::Window};

pub(super) fn window(offset_seconds: i32) -> Window {
    Window {
        start: Timestamp::from_second(0).unwrap(),
        end: Timestamp::from_second(4_000_000_000).unwrap(),
        offset_seconds,
    }
}

pub(super) fn rec(json: &str, offset_seconds: i32) -> Record {
    Record::new(
        RawValue::from_string(json.to_owned()).unwrap(),
        &window(offset_seconds),
    )
}

pub(super) fn refs(v: &[Record]) -> Vec<&Record> {
    v.iter().collect()
}

pub(super) fn labels(s: &Summary<'_>) -> Vec<String> {
    s.groups
        .iter()
        .map(|g| {
            g.key
                .iter()
                .map(|p| p.label().map_or("null".to_owned(), Cow::into_owned))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// A conversation through two queues and a third, unanswered segment.
pub(super) const CONVERSATION: &str = r#"{
        "sessionId":"c1","conversationId":"c-1","channel":"voice","botId":"st-1",
        "finalStatus":"CLOSED","smartStatus":"RESOLVED","Direction":"Inbound",
        "sessionStartTime":"2024-09-26T10:00:00","dispositions":["SALE","ESCALATED","SALE"],
        "destinations":[
          {"queueId":"qu-a","EnterTime":"2024-09-26T10:00:10",
           "respondingAgent":{"agentId":"u-x","assignedAt":"2024-09-26T10:01:10",
             "interactionDuration":100,"firstResponseDuration":5,"afterCallWorkDuration":20}},
          {"queueId":"qu-b","EnterTime":"2024-09-26T10:05:00",
           "respondingAgent":{"agentId":"u-y","assignedAt":"2024-09-26T10:05:30",
             "interactionDuration":300,"firstResponseDuration":"7","afterCallWorkDuration":-1}},
          {"queueId":"qu-a","EnterTime":"2024-09-26T10:20:00"}
        ]}"#;

/// A bot session: no segments, the direction only in `customerinfo`.
pub(super) const BOT: &str = r#"{"sessionId":"b1","channel":"rtm","botId":"st-1","smartStatus":"",
        "sessionStartTime":"2024-09-26T11:00:00","customerinfo":{"Direction":"Outbound"}}"#;
