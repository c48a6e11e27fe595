//! Reading and redriving a route's dead letters: what `fanout dlq` runs.
//!
//! A redrive publishes the event again to the one target's redrive subject, which only
//! that target's consumer listens on, so the other targets are not delivered twice.
//! The dead letter is deleted only after JetStream acknowledged the republished event:
//! an interrupted redrive leaves it in place, and running it again is safe, because
//! the republished event carries a message id derived from the dead letter (JetStream
//! drops the second copy within the duplicate window).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use fanout_config::dead_letter as dlq;
use fanout_config::names::RouteKey;

use crate::copies;
use futures::{StreamExt, TryStreamExt};

/// One dead letter, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    pub target: String,
    pub event_id: String,
    pub attempts: String,
    pub reason: String,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub original_subject: String,
    /// RFC 3339.
    pub dead_lettered_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter stream {stream}: {action}")]
    Stream {
        stream: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("republishing dead letter {sequence} to {subject}")]
    Publish {
        sequence: u64,
        subject: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Dead letters sent again to their target and removed from the dead-letter stream.
    pub events: Vec<DeadLetter>,
}

/// Reads up to `limit` dead letters of `key`'s route, oldest first, for one target or
/// all of them.
pub async fn list(
    js: &jetstream::Context,
    key: &RouteKey,
    target: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let stream_name = key.dead_letter_stream();
    let fail = |action: &'static str| {
        let stream = stream_name.clone();
        move |e: Box<dyn std::error::Error + Send + Sync>| DeadLetterError::Stream {
            stream,
            action,
            source: e,
        }
    };
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| fail("opening it")(Box::new(e)))?;
    let subject = match target {
        Some(t) => key.dead_letter_subject(t),
        None => key.dead_letter_subjects(),
    };
    // An ordered consumer on an empty selection would wait for messages; count first.
    let stored: usize = stream
        .info_with_subjects(&subject)
        .await
        .map_err(|e| fail("counting its messages")(Box::new(e)))?
        .try_fold(0, |n, (_, count)| async move { Ok(n + count) })
        .await
        .map_err(|e| fail("counting its messages")(Box::new(e)))?;
    let wanted = stored.min(limit);
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::All,
            description: Some("fanout dlq list".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| fail("reading it")(Box::new(e)))?;
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| fail("reading it")(Box::new(e)))?;
    let mut out = Vec::with_capacity(wanted);
    while out.len() < wanted {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| fail("reading it")(Box::new(e)))?;
        let info = message.info().map_err(|e| fail("reading it")(e))?;
        let (sequence, pending, published) = (info.stream_sequence, info.pending, info.published);
        let headers = message.headers.clone().unwrap_or_default();
        out.push(DeadLetter {
            sequence,
            target: header(&headers, dlq::TARGET).unwrap_or_default(),
            event_id: header(&headers, dlq::EVENT_ID).unwrap_or_default(),
            attempts: header(&headers, dlq::ATTEMPTS).unwrap_or_default(),
            reason: header(&headers, dlq::REASON).unwrap_or_default(),
            last_status: header(&headers, dlq::LAST_STATUS),
            last_error: header(&headers, dlq::LAST_ERROR),
            original_subject: header(&headers, dlq::ORIGINAL_SUBJECT).unwrap_or_default(),
            dead_lettered_at: humantime::format_rfc3339_seconds(std::time::SystemTime::from(
                published,
            ))
            .to_string(),
        });
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Sends up to `limit` dead letters of `target` again, oldest first, each to the
/// target's redrive subject, and removes each from the dead-letter stream once the
/// route's stream has it.
pub async fn redrive(
    js: &jetstream::Context,
    key: &RouteKey,
    target: &str,
    limit: usize,
) -> Result<Redriven, DeadLetterError> {
    let letters = list(js, key, Some(target), limit).await?;
    let stream_name = key.dead_letter_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| DeadLetterError::Stream {
            stream: stream_name.clone(),
            action: "opening it",
            source: Box::new(e),
        })?;
    let subject = key.redrive_subject(target);
    let mut done = Redriven::default();
    for letter in letters {
        let publish_error =
            |e: Box<dyn std::error::Error + Send + Sync>| DeadLetterError::Publish {
                sequence: letter.sequence,
                subject: subject.clone(),
                source: e,
            };
        let original = stream
            .get_raw_message(letter.sequence)
            .await
            .map_err(|e| publish_error(Box::new(e)))?;
        // The event id stays (targets deduplicate on it); the message id is the dead
        // letter's, so a repeated redrive of the same letter is stored once.
        let headers = copies::headers(
            &original.headers,
            |name| {
                dlq::DESCRIPTIVE
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(name))
            },
            &format!("redrive:{stream_name}:{}", letter.sequence),
        );
        js.publish_with_headers(subject.clone(), headers, original.payload.clone())
            .await
            .map_err(|e| publish_error(Box::new(e)))?
            .await
            .map_err(|e| publish_error(Box::new(e)))?;
        stream
            .delete_message(letter.sequence)
            .await
            .map_err(|e| DeadLetterError::Stream {
                stream: stream_name.clone(),
                action: "deleting a redriven dead letter",
                source: Box::new(e),
            })?;
        done.events.push(letter);
    }
    Ok(done)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    copies::header(headers, name).map(str::to_string)
}
