//! Timestamps from the placement driver's TSO, taken in batches.

use crate::pd::PdClient;
use crate::{ClientError, Result};
use tokio::sync::{mpsc, oneshot};

/// Timestamps requested together at most.
const TSO_BATCH_MAX: usize = ringkv_proto::limits::TSO_COUNT_MAX as usize;

/// Hands out timestamps, taking them from the placement driver in batches: every request
/// waiting when a call goes out is served by that one call.
pub struct TsoBatcher {
    tx: mpsc::Sender<oneshot::Sender<Result<u64>>>,
}

impl TsoBatcher {
    /// Starts the batcher's task on the current tokio runtime.
    pub fn start(pd: PdClient) -> Self {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<u64>>>(TSO_BATCH_MAX);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while waiters.len() < TSO_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(w) => waiters.push(w),
                        Err(_) => break,
                    }
                }
                let n = waiters.len() as u64;
                match pd.tso(n as u32).await {
                    Ok(last) => {
                        for (i, w) in waiters.into_iter().enumerate() {
                            let _ = w.send(Ok(last - n + 1 + i as u64));
                        }
                    }
                    Err(e) => {
                        for w in waiters {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        TsoBatcher { tx }
    }

    /// One timestamp, strictly greater than every one this batcher handed out before.
    pub async fn get(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        let closed = || ClientError::Server("the client's timestamp task has stopped".into());
        self.tx.send(tx).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}
