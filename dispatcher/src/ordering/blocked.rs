//! Keys held back until a dead letter is redriven (`afterDeadLetter: block`),
//! recorded in the `fanout_ordering` KV bucket so that the block outlives the
//! dispatcher that dead-lettered the event: whichever replica delivers the target
//! next reads them when it takes over. Written only when a head is dead-lettered and
//! when its redrive is delivered, so it costs nothing per event.

use std::time::SystemTime;

use async_nats::jetstream::kv;
use fanout_config::names::RouteKey;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlockedError {
    #[error("recording blocked key in KV bucket {bucket}", bucket = fanout_config::names::ORDERING_BUCKET)]
    Put(#[source] kv::PutError),
    #[error("removing blocked key from KV bucket {bucket}", bucket = fanout_config::names::ORDERING_BUCKET)]
    Delete(#[source] kv::DeleteError),
    #[error("reading blocked keys from KV bucket {bucket}", bucket = fanout_config::names::ORDERING_BUCKET)]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One blocked key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockedKey {
    pub key: String,
    /// The dead-lettered event whose redrive lifts the block.
    pub event_id: String,
    /// RFC 3339.
    pub since: String,
}

/// The blocked keys of one target.
#[derive(Clone)]
pub struct BlockedKeys {
    store: kv::Store,
    prefix: String,
}

impl BlockedKeys {
    pub fn new(store: kv::Store, route: &RouteKey, target: &str) -> BlockedKeys {
        BlockedKeys {
            store,
            prefix: route.ordering_key_prefix(target),
        }
    }

    /// KV keys allow few characters, and ordering keys are anything: a digest.
    fn entry(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.prefix)
    }

    pub async fn put(
        &self,
        key: &str,
        event_id: &str,
        since: SystemTime,
    ) -> Result<(), BlockedError> {
        let value = BlockedKey {
            key: key.to_string(),
            event_id: event_id.to_string(),
            since: crate::telemetry::rfc3339(since),
        };
        let bytes = serde_json::to_vec(&value).expect("blocked keys serialize");
        self.store
            .put(self.entry(key), bytes.into())
            .await
            .map_err(BlockedError::Put)?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), BlockedError> {
        self.store
            .purge(self.entry(key))
            .await
            .map_err(BlockedError::Delete)
    }

    /// Every key of the target blocked now.
    pub async fn list(&self) -> Result<Vec<BlockedKey>, BlockedError> {
        let read = |e: Box<dyn std::error::Error + Send + Sync>| BlockedError::Read(e);
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| read(Box::new(e)))?
            .try_collect()
            .await
            .map_err(|e| read(Box::new(e)))?;
        let mut blocked = Vec::new();
        let prefix = format!("{}.", self.prefix);
        for k in keys.iter().filter(|k| k.starts_with(&prefix)) {
            let Some(value) = self.store.get(k).await.map_err(|e| read(Box::new(e)))? else {
                continue;
            };
            match serde_json::from_slice::<BlockedKey>(&value) {
                Ok(b) => blocked.push(b),
                Err(error) => {
                    tracing::warn!(key = %k, error = %fanout_config::error_chain(&error), "ignoring a blocked-key entry that does not parse")
                }
            }
        }
        Ok(blocked)
    }
}
