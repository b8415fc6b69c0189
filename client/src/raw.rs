//! The raw key-value API.

use crate::backoff::Backoff;
use crate::pd::{channel_to, PdClient, RegionRoute};
use crate::region_cache::RegionCache;
use crate::session::{Sessions, Ticket};
use crate::{ClientError, Result};
use futures::future::join_all;
use parking_lot::Mutex;
use ringkv_proto::errorpb::{region_error, RegionError};
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::*;
use ringkv_proto::metapb::Peer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Options of a [`RawClient`].
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// How long one call may take, retries included. Default 10 s.
    pub timeout: Duration,
    /// How long one attempt at one node may take before the SDK tries elsewhere. Default 3 s.
    pub attempt_timeout: Duration,
    /// The keyspace all keys belong to. Default: keyspace 0, hash-ordered.
    pub keyspace: Keyspace,
    /// Send reads to followers (spreading read load over the replicas) instead of the leader.
    /// Still linearizable: the follower asks the leader for its commit index and answers once
    /// it has applied that far, which costs a round trip a leader's lease read does not pay.
    /// Default false. Per request: [`RawClient::with_replica_read`].
    pub replica_read: bool,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            keyspace: keys::default_keyspace(),
            replica_read: false,
        }
    }
}

/// What a [`RawClient::compare_and_swap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// The key held what was expected and now holds the new value (or is deleted).
    pub swapped: bool,
    /// When not swapped: what the key holds instead (None: it does not exist).
    pub current: Option<Vec<u8>>,
}

/// A client of the raw key-value API. Cheap to clone; clones share connections and caches.
#[derive(Clone)]
pub struct RawClient {
    pd: PdClient,
    shared: Arc<Shared>,
    config: RawConfig,
    /// Transactional reads are stale reads (set by the transaction client for a stale
    /// snapshot; raw reads never are).
    stale_reads: bool,
}

struct Shared {
    regions: RegionCache,
    stores: Mutex<HashMap<u64, KvClient<Channel>>>,
    /// Regions whose replica answered `DataIsNotReady`, and when: their stale reads go to the
    /// leader as ordinary reads for [`STALE_FALLBACK`].
    stale_unready: Mutex<HashMap<u64, Instant>>,
    /// Stores that could not be reached, and when: follower reads pass them over for
    /// [`UNREACHABLE_FOR`].
    unreachable: Mutex<HashMap<u64, Instant>>,
    /// The session raw writes are numbered in, so a retry is applied at most once.
    sessions: Sessions,
}

/// How long follower reads pass over a store that could not be reached.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// How long a region's stale reads go to its leader after a replica was not ready.
const STALE_FALLBACK: Duration = Duration::from_secs(1);

/// Where a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// The leader (and every write).
    Leader,
    /// A follower, linearizable (ReadIndex): [`RawConfig::replica_read`].
    Replica,
    /// A follower, at a timestamp at or below its safe timestamp, with no leader contact.
    Stale,
}

impl Shared {
    /// Whether `store_id` could not be reached a moment ago.
    fn recently_unreachable(&self, store_id: u64) -> bool {
        self.unreachable
            .lock()
            .get(&store_id)
            .is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
    }

    /// Whether stale reads of `region_id` fall back to the leader now.
    fn stale_unready(&self, region_id: u64) -> bool {
        let mut unready = self.stale_unready.lock();
        match unready.get(&region_id) {
            Some(at) if at.elapsed() < STALE_FALLBACK => true,
            Some(_) => {
                unready.remove(&region_id);
                false
            }
            None => false,
        }
    }
}

/// What one attempt at one region came to.
enum Attempt<T> {
    Done(T),
    /// Worth retrying, after the cache was updated; `immediately` skips the backoff.
    Retry {
        reason: String,
        immediately: bool,
    },
}

/// Whether `operation` is a raw write (numbered in the client's session, so that a retry is
/// applied at most once).
fn writes(operation: &str) -> bool {
    matches!(
        operation,
        "put" | "batch_put" | "delete" | "delete_range" | "compare_and_swap"
    )
}

pub(crate) type BoxFut<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<T, tonic::Status>> + Send + 'a>,
>;

/// One region's part of a merged scan: its encoded range, where its user-key order resumes,
/// and the page read but not yet merged.
struct ScanCursor {
    lo: Vec<u8>,
    hi: Vec<u8>,
    next: Vec<u8>,
    buffer: std::collections::VecDeque<KvPair>,
    exhausted: bool,
}

/// Items one request of a batch carries at most (a region's share of a larger batch is sent
/// in several requests).
pub(crate) const GROUP_ITEMS_MAX: usize = 4096;
/// Bytes one request of a batch carries at most (as the caller weighs its items).
pub(crate) const GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Region pages a merged scan fetches at once at most.
const SCAN_FANOUT_MAX: usize = 64;

/// The least key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The smaller of two range ends, an empty end being unbounded.
fn clip_end(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => a.min(b).to_vec(),
    }
}

/// One request of a batch: items for one region, numbered by one session ticket (writes).
struct Group<I> {
    route: RegionRoute,
    ticket: Option<Arc<Ticket>>,
    items: Vec<I>,
    bytes: usize,
}

/// Takes out of `groups` (to send next round) each group whose key span reaches a key of
/// another group of the same session number: a region applying one of them must not record a
/// span that covers an item it never got. Only a retry whose items moved while they were
/// being routed can meet this.
fn defer_overlapping<I>(
    groups: &mut Vec<Group<I>>,
    key_of: &impl Fn(&I) -> &Vec<u8>,
) -> Vec<(Option<Arc<Ticket>>, I)> {
    let span = |g: &Group<I>| {
        let min = g
            .items
            .iter()
            .map(key_of)
            .min()
            .cloned()
            .unwrap_or_default();
        let max = g
            .items
            .iter()
            .map(key_of)
            .max()
            .cloned()
            .unwrap_or_default();
        (min, max)
    };
    let mut deferred = Vec::new();
    let mut kept: Vec<Group<I>> = Vec::new();
    for g in groups.drain(..) {
        let (min, max) = span(&g);
        let clashes = kept.iter().any(|k| {
            let (kmin, kmax) = span(k);
            same_ticket(&k.ticket, &g.ticket) && min <= kmax && kmin <= max
        });
        if clashes {
            let ticket = g.ticket;
            deferred.extend(g.items.into_iter().map(|i| (ticket.clone(), i)));
        } else {
            kept.push(g);
        }
    }
    *groups = kept;
    deferred
}

/// Whether two groups carry the same numbered write (or are both unnumbered).
fn same_ticket(a: &Option<Arc<Ticket>>, b: &Option<Arc<Ticket>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The shared request rules (`ringkv_proto::limits`), as this SDK's error.
fn rule(check: std::result::Result<(), String>) -> Result<()> {
    check.map_err(ClientError::InvalidArgument)
}

impl RawClient {
    /// Connects through the placement driver at `pd_endpoints` with default options.
    pub async fn connect(pd_endpoints: &[impl AsRef<str>]) -> Result<Self> {
        Self::connect_with_config(pd_endpoints, RawConfig::default()).await
    }

    pub async fn connect_with_config(
        pd_endpoints: &[impl AsRef<str>],
        config: RawConfig,
    ) -> Result<Self> {
        let pd = PdClient::connect(pd_endpoints).await?;
        Ok(Self::with_pd(pd, config))
    }

    /// A client over an existing placement client.
    /// A client of the keyspace called `name` (created with
    /// [`PdClient::create_keyspace`]); its ordering comes from the placement driver.
    pub async fn connect_keyspace(
        pd_endpoints: &[impl AsRef<str>],
        name: &str,
        config: RawConfig,
    ) -> Result<Self> {
        let pd = PdClient::connect(pd_endpoints).await?;
        let keyspace = pd
            .get_keyspace(name)
            .await?
            .keyspace
            .ok_or_else(|| ClientError::Server(format!("keyspace {name:?} has no id")))?;
        Ok(Self::with_pd(pd, RawConfig { keyspace, ..config }))
    }

    pub fn with_pd(pd: PdClient, config: RawConfig) -> Self {
        RawClient {
            pd,
            shared: Arc::new(Shared {
                regions: RegionCache::default(),
                stores: Mutex::new(HashMap::new()),
                stale_unready: Mutex::new(HashMap::new()),
                unreachable: Mutex::new(HashMap::new()),
                sessions: Sessions::default(),
            }),
            config,
            stale_reads: false,
        }
    }

    /// The same client with another per-call deadline.
    /// A handle (sharing connections and caches) whose reads go to followers (`true`) or to the
    /// leader (`false`); see [`RawConfig::replica_read`].
    pub fn with_replica_read(&self, replica_read: bool) -> Self {
        let mut c = self.clone();
        c.config.replica_read = replica_read;
        c
    }

    /// A handle whose transactional reads are stale reads (see [`ReadRoute::Stale`]).
    pub(crate) fn with_stale_reads(&self) -> Self {
        let mut c = self.clone();
        c.stale_reads = true;
        c
    }

    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.config.timeout = timeout;
        c
    }

    pub fn pd(&self) -> &PdClient {
        &self.pd
    }

    /// The keyspace this client's keys belong to.
    pub fn keyspace(&self) -> Keyspace {
        self.config.keyspace
    }

    pub(crate) fn encode(&self, user_key: &[u8]) -> Vec<u8> {
        keys::encode(&self.config.keyspace, user_key)
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.batch_put_inner("put", vec![(key.into(), value.into())])
            .await
    }

    /// Writes all `pairs`; each region's share is applied atomically.
    pub async fn batch_put(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        self.batch_put_inner("batch_put", pairs).await
    }

    async fn batch_put_inner(
        &self,
        operation: &'static str,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let mut bytes = 0usize;
        for (k, v) in &pairs {
            rule(check_user_key(k))?;
            rule(check_value(v))?;
            bytes += k.len() + v.len();
        }
        rule(check_batch(pairs.len(), "pairs", bytes))?;
        let items: Vec<KvPair> = pairs
            .into_iter()
            .map(|(k, v)| KvPair {
                key: self.encode(&k),
                value: v,
            })
            .collect();
        self.run_batch(
            operation,
            items,
            |p| &p.key,
            |mut client, context, pairs| {
                Box::pin(async move {
                    let r = client
                        .raw_batch_put(RawBatchPutRequest {
                            context: Some(context),
                            pairs,
                        })
                        .await?
                        .into_inner();
                    Ok((r.region_error, ()))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// Reads the value at `key`.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let key = key.into();
        let mut found = self.batch_get_inner("get", vec![key]).await?;
        Ok(found.pop().map(|(_, v)| v))
    }

    /// Reads every key of `keys` that exists; returns (user key, value) pairs.
    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.batch_get_inner("batch_get", keys).await
    }

    async fn batch_get_inner(
        &self,
        operation: &'static str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        rule(check_batch(keys.len(), "keys", 0))?;
        for k in &keys {
            rule(check_user_key(k))?;
        }
        let encoded: Vec<Vec<u8>> = keys.iter().map(|k| self.encode(k)).collect();
        let results = self
            .run_batch(
                operation,
                encoded,
                |k| k,
                |mut client, context, keys| {
                    Box::pin(async move {
                        let r = client
                            .raw_batch_get(RawBatchGetRequest {
                                context: Some(context),
                                keys,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error, r.pairs))
                    })
                },
            )
            .await?;
        let mut found = Vec::new();
        for pair in results.into_iter().flatten() {
            let user = keys::user_key_unchecked(&pair.key)
                .ok_or_else(|| ClientError::Server("node returned a malformed key".into()))?
                .to_vec();
            found.push((user, pair.value));
        }
        Ok(found)
    }

    /// Deletes `key` (a no-op if it does not exist).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<()> {
        let key = key.into();
        rule(check_user_key(&key))?;
        let encoded = self.encode(&key);
        self.run_batch(
            "delete",
            vec![encoded],
            |k| k,
            |mut client, context, mut keys| {
                Box::pin(async move {
                    let key = keys.pop().unwrap_or_default();
                    let r = client
                        .raw_delete(RawDeleteRequest {
                            context: Some(context),
                            key,
                        })
                        .await?
                        .into_inner();
                    Ok((r.region_error, ()))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// Atomically: if `key` holds `expected` (None: if it does not exist), writes `new` (None:
    /// deletes the key) and returns swapped; otherwise changes nothing and returns what the key
    /// holds. Linearizable, and applied at most once however often the SDK retries it.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<CasOutcome> {
        let key = key.into();
        rule(check_user_key(&key))?;
        for v in expected.iter().chain(new.iter()) {
            rule(check_value(v))?;
        }
        let encoded = self.encode(&key);
        let mut outcomes = self
            .run_batch(
                "compare_and_swap",
                vec![encoded],
                |k| k,
                move |mut client, context, mut keys| {
                    let (expected, new) = (expected.clone(), new.clone());
                    Box::pin(async move {
                        let key = keys.pop().unwrap_or_default();
                        let r = client
                            .raw_compare_and_swap(RawCompareAndSwapRequest {
                                context: Some(context),
                                key,
                                expect_exists: expected.is_some(),
                                expected_value: expected.unwrap_or_default(),
                                delete: new.is_none(),
                                value: new.unwrap_or_default(),
                            })
                            .await?
                            .into_inner();
                        let outcome = CasOutcome {
                            swapped: r.swapped,
                            current: (!r.swapped && r.exists).then_some(r.current_value),
                        };
                        Ok((r.region_error, outcome))
                    })
                },
            )
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| ClientError::Server("compare-and-swap got no answer".into()))
    }

    /// Writes `value` at `key` only if the key does not exist ([`RawClient::compare_and_swap`]).
    pub async fn put_if_absent(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome> {
        self.compare_and_swap(key, None, Some(value.into())).await
    }

    /// Deletes `key` only if it holds `expected` ([`RawClient::compare_and_swap`]).
    pub async fn delete_if_equal(
        &self,
        key: impl Into<Vec<u8>>,
        expected: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome> {
        self.compare_and_swap(key, Some(expected.into()), None)
            .await
    }

    /// Splits the region holding encoded key `split_key` so that a region starts there. An
    /// admin operation (pre-splitting, tests, the admin CLI); regions also split by themselves
    /// as they grow. Succeeds at once if a region already starts at `split_key`.
    pub async fn split_region(&self, split_key: Vec<u8>) -> Result<()> {
        rule(check_user_key(&split_key))?;
        self.run_batch(
            "split_region",
            vec![split_key],
            |k| k,
            |mut client, context, mut keys| {
                Box::pin(async move {
                    let split_key = keys.pop().unwrap_or_default();
                    let r = client
                        .split_region(SplitRegionRequest {
                            context: Some(context),
                            split_key,
                        })
                        .await?
                        .into_inner();
                    // The key routed to this region yet is not inside it: it is the region's
                    // start, so the boundary exists already.
                    let done = matches!(
                        r.region_error.as_ref().and_then(|e| e.kind.as_ref()),
                        Some(region_error::Kind::KeyNotInRegion(_))
                    );
                    Ok((if done { None } else { r.region_error }, ()))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// Merges region `source_region_id` into the adjacent region `target_region_id`, whose
    /// peers must sit on the same stores. An admin operation (the placement driver merges small
    /// regions by itself). Returns once the source has prepared the merge; the target completes
    /// it moments later, and routing follows. A merge the regions cannot make (not adjacent,
    /// peers elsewhere) is an `InvalidArgument` error that says why.
    pub async fn merge_region(&self, source_region_id: u64, target_region_id: u64) -> Result<()> {
        rule(check_merge_ids(source_region_id, target_region_id))?;
        let deadline = Instant::now() + self.config.timeout;
        let mut backoff = Backoff::new(deadline);
        let mut last_error = String::from("none");
        for round in 0.. {
            match self.pd.get_region_by_id(source_region_id).await {
                Ok(route) => {
                    let outcome = self
                        .attempt(
                            &route,
                            round,
                            ReadRoute::Leader,
                            move |mut client, context| {
                                Box::pin(async move {
                                    let r = client
                                        .merge_region(MergeRegionRequest {
                                            source_region_id: context.region_id,
                                            source_epoch: context.region_epoch,
                                            target_region_id,
                                        })
                                        .await?
                                        .into_inner();
                                    match r.region_error {
                                        // No kind: the regions cannot merge as they are.
                                        Some(e) if e.kind.is_none() => {
                                            Err(tonic::Status::failed_precondition(e.message))
                                        }
                                        other => Ok((other, ())),
                                    }
                                })
                            },
                        )
                        .await?;
                    match outcome {
                        Attempt::Done(()) => return Ok(()),
                        Attempt::Retry { reason, .. } => last_error = reason,
                    }
                }
                Err(e) if e.is_retryable() => last_error = e.to_string(),
                Err(e) => return Err(e),
            }
            if !backoff.wait().await {
                break;
            }
        }
        Err(self.timeout("merge_region", last_error))
    }

    /// Returns up to `limit` pairs with user key in `[start, end)` in user-key order; an empty
    /// `end` means "to the end of the keyspace".
    ///
    /// Memory stays bounded by the page size times the number of regions, not by the data:
    /// over a hash keyspace every region is read in user-key pages and the pages are merged
    /// (k-way) as they come; over a range keyspace the regions are walked in order and the walk
    /// stops once `limit` pairs are found. Splits and merges during the scan are followed.
    pub async fn scan(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = (start.into(), end.into());
        rule(check_user_range(&start, &end))?;
        rule(check_scan_limit(limit))?;
        let deadline = Instant::now() + self.config.timeout;
        if self.config.keyspace.mode == KeyspaceMode::Range as i32 {
            self.scan_ordered(&start, &end, limit, deadline).await
        } else {
            self.scan_merged(&start, &end, limit, deadline).await
        }
    }

    /// Range keyspace: encoded order is user order, so walk regions from the start.
    async fn scan_ordered(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        deadline: Instant,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (_, span_end) = self.encoded_span(start, end);
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut next = start.to_vec();
        loop {
            let remaining = limit - out.len() as u32;
            let anchor = keys::encode(&self.config.keyspace, &next);
            let (pairs, region) = self
                .scan_page(&anchor, &next, end, remaining, deadline)
                .await?;
            let full = pairs.len() as u32 == remaining;
            if let Some(last) = pairs.last() {
                next = successor(&last.key);
            }
            out.extend(pairs.into_iter().map(|p| (p.key, p.value)));
            if out.len() as u32 >= limit {
                return Ok(out);
            }
            if !full {
                // This region has no more: continue after it, if the span goes on.
                if region.end_key.is_empty() || region.end_key >= span_end {
                    return Ok(out);
                }
                match keys::user_key_unchecked(&region.end_key) {
                    Some(user) => next = next.max(user.to_vec()),
                    None => return Ok(out),
                }
            }
        }
    }

    /// Hash keyspace: every region holds keys from all over the user-key order; read each in
    /// pages and merge.
    async fn scan_merged(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        deadline: Instant,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (span_start, span_end) = self.encoded_span(start, end);
        let routes = self.pd.scan_regions(&span_start, &span_end, 0).await?;
        for route in &routes {
            self.shared.regions.insert(route.clone());
        }
        // A page per region: enough that most regions answer in one page.
        let page = (2 * limit / routes.len().max(1) as u32).clamp(16.min(limit), limit);
        let mut cursors: Vec<ScanCursor> = routes
            .iter()
            .map(|r| ScanCursor {
                lo: r.region.start_key.clone().max(span_start.clone()),
                hi: clip_end(&r.region.end_key, &span_end),
                next: start.to_vec(),
                buffer: std::collections::VecDeque::new(),
                exhausted: false,
            })
            .collect();
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(limit as usize);
        while (out.len() as u32) < limit {
            // Refill every empty cursor that may have more (in parallel), then take the least:
            // every cursor that can still produce a key then shows its smallest.
            let need: Vec<usize> = cursors
                .iter()
                .enumerate()
                .filter(|(_, c)| c.buffer.is_empty() && !c.exhausted)
                .map(|(i, _)| i)
                .collect();
            for group in need.chunks(SCAN_FANOUT_MAX) {
                let fetches = group.iter().map(|&i| {
                    let (lo, next) = (cursors[i].lo.clone(), cursors[i].next.clone());
                    async move { self.scan_page(&lo, &next, end, page, deadline).await }
                });
                let results = join_all(fetches).await;
                for (&i, result) in group.iter().zip(results) {
                    let (pairs, region) = result?;
                    let region_end = clip_end(&region.end_key, &span_end);
                    // The cursor's range split: the rest becomes a cursor of its own.
                    if !region_end.is_empty()
                        && (cursors[i].hi.is_empty() || region_end < cursors[i].hi)
                    {
                        let rest = ScanCursor {
                            lo: region_end.clone(),
                            hi: std::mem::replace(&mut cursors[i].hi, region_end),
                            next: cursors[i].next.clone(),
                            buffer: std::collections::VecDeque::new(),
                            exhausted: false,
                        };
                        cursors.push(rest);
                    }
                    let c = &mut cursors[i];
                    c.exhausted = (pairs.len() as u32) < page;
                    if let Some(last) = pairs.last() {
                        c.next = successor(&last.key);
                    }
                    c.buffer.extend(pairs);
                }
            }
            if cursors.iter().any(|c| c.buffer.is_empty() && !c.exhausted) {
                // A split added cursors this round; fill them before choosing.
                continue;
            }
            let least = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.buffer.front().map(|p| (i, p.key.clone())))
                .min_by(|a, b| a.1.cmp(&b.1));
            let Some((i, key)) = least else { break };
            let pair = cursors[i].buffer.pop_front().expect("non-empty");
            // A region that merged while we read may have returned a neighbour's keys too.
            if out.last().is_some_and(|(k, _)| *k == key) {
                continue;
            }
            out.push((pair.key, pair.value));
        }
        Ok(out)
    }

    /// One page of a region's scan: up to `limit` pairs with user key in `[start, end)` from
    /// the region holding encoded `anchor`, with that region, retrying within `deadline`.
    async fn scan_page(
        &self,
        anchor: &[u8],
        start: &[u8],
        end: &[u8],
        limit: u32,
        deadline: Instant,
    ) -> Result<(Vec<KvPair>, ringkv_proto::metapb::Region)> {
        let keyspace = self.config.keyspace;
        let mut backoff = Backoff::new(deadline);
        let mut round = 0;
        loop {
            let route = match self.route(anchor).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() => {
                    if !backoff.wait().await {
                        return Err(self.timeout("scan", e.to_string()));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (start_key, end_key) = (start.to_vec(), end.to_vec());
            let attempt = self
                .attempt(
                    &route,
                    round,
                    self.read_route("scan"),
                    move |mut client, context| {
                        Box::pin(async move {
                            let r = client
                                .raw_scan(RawScanRequest {
                                    context: Some(context),
                                    keyspace: Some(keyspace),
                                    start_key,
                                    end_key,
                                    limit,
                                    key_only: false,
                                })
                                .await?
                                .into_inner();
                            Ok((r.region_error, r.pairs))
                        })
                    },
                )
                .await?;
            round += 1;
            match attempt {
                Attempt::Done(pairs) => return Ok((pairs, route.region)),
                Attempt::Retry {
                    reason,
                    immediately,
                    ..
                } => {
                    let in_time =
                        (immediately && Instant::now() < deadline) || backoff.wait().await;
                    if !in_time {
                        return Err(self.timeout("scan", reason));
                    }
                }
            }
        }
    }

    /// Deletes every key with user key in `[start, end)`; an empty `end` means "to the end".
    pub async fn delete_range(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) -> Result<()> {
        let (start, end) = (start.into(), end.into());
        rule(check_user_range(&start, &end))?;
        let keyspace = self.config.keyspace;
        let (start_arg, end_arg) = (start.clone(), end.clone());
        self.for_each_region(
            "delete_range",
            &start_arg,
            &end_arg,
            move |mut client, context| {
                let (start_key, end_key) = (start.clone(), end.clone());
                Box::pin(async move {
                    let r = client
                        .raw_delete_range(RawDeleteRangeRequest {
                            context: Some(context),
                            keyspace: Some(keyspace),
                            start_key,
                            end_key,
                        })
                        .await?
                        .into_inner();
                    Ok((r.region_error, ()))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// The encoded range a user-key range can touch: the whole keyspace for a hash keyspace.
    pub(crate) fn encoded_span(&self, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let ks = &self.config.keyspace;
        if ks.mode == KeyspaceMode::Range as i32 {
            let end = if end.is_empty() {
                keys::keyspace_end(ks)
            } else {
                keys::encode(ks, end)
            };
            (keys::encode(ks, start), end)
        } else {
            (keys::keyspace_prefix(ks), keys::keyspace_end(ks))
        }
    }

    /// Runs `send` once on every region the range can touch, each with retries. If regions
    /// change underneath (split, merge), starts over from a fresh region list.
    pub(crate) async fn for_each_region<T: Send + 'static>(
        &self,
        operation: &'static str,
        start: &[u8],
        end: &[u8],
        send: impl Fn(KvClient<Channel>, Context) -> BoxFut<'static, (Option<RegionError>, T)>
            + Send
            + Sync,
    ) -> Result<Vec<T>> {
        let (span_start, span_end) = self.encoded_span(start, end);
        let deadline = Instant::now() + self.config.timeout;
        let mut backoff = Backoff::new(deadline);
        let mut last_error;
        // A write is one numbered write of the session in every region and every round: a
        // region that applied it (or a part of it, before a split or merge) skips that part.
        let ticket = match writes(operation) {
            true => Some(self.ticket(deadline).await?),
            false => None,
        };
        // Counts attempts, so a retry of a follower read picks another follower.
        let mut round = 0;
        loop {
            let session = ticket.as_ref().map(Ticket::write_session);
            let routes = match self.pd.scan_regions(&span_start, &span_end, 0).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() => {
                    last_error = e.to_string();
                    if !backoff.wait().await {
                        return Err(self.timeout(operation, last_error));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            for route in &routes {
                self.shared.regions.insert(route.clone());
            }
            // Route by each region's first key inside the span, so the cache picks the region.
            let anchors: Vec<Vec<u8>> = routes
                .iter()
                .map(|r| r.region.start_key.clone().max(span_start.clone()))
                .collect();
            let attempts = anchors.iter().map(|anchor| {
                self.attempt_single(anchor, round, self.read_route(operation), session, &send)
            });
            let mut results = Vec::new();
            let mut retry = None;
            for outcome in join_all(attempts).await {
                match outcome? {
                    Attempt::Done(v) => results.push(v),
                    Attempt::Retry { reason, .. } => retry = Some(reason),
                }
            }
            round += 1;
            match retry {
                None => return Ok(results),
                Some(reason) => {
                    last_error = reason;
                    if !backoff.wait().await {
                        return Err(self.timeout(operation, last_error));
                    }
                }
            }
        }
    }

    async fn attempt_single<T>(
        &self,
        anchor: &[u8],
        round: usize,
        read: ReadRoute,
        session: Option<WriteSession>,
        send: &(impl Fn(KvClient<Channel>, Context) -> BoxFut<'static, (Option<RegionError>, T)>
              + Send
              + Sync),
    ) -> Result<Attempt<T>> {
        let route = match self.route(anchor).await {
            Ok(r) => r,
            Err(e) if e.is_retryable() => {
                return Ok(Attempt::Retry {
                    reason: e.to_string(),
                    immediately: false,
                })
            }
            Err(e) => return Err(e),
        };
        self.attempt_with(&route, round, read, session, |client, context| {
            send(client, context)
        })
        .await
    }

    /// Where `operation` goes (see [`RawConfig::replica_read`], [`ReadRoute`]).
    fn read_route(&self, operation: &str) -> ReadRoute {
        if writes(operation) {
            ReadRoute::Leader
        } else if self.stale_reads && matches!(operation, "txn_get" | "txn_scan") {
            ReadRoute::Stale
        } else if self.config.replica_read {
            ReadRoute::Replica
        } else {
            ReadRoute::Leader
        }
    }

    pub(crate) fn timeout(&self, operation: &'static str, last_error: String) -> ClientError {
        ClientError::Timeout {
            operation,
            timeout_ms: self.config.timeout.as_millis() as u64,
            last_error,
        }
    }

    /// Groups `items` by region, sends each group, and retries the groups that failed (with
    /// fresh routing) until all succeed or the deadline passes.
    pub(crate) async fn run_batch<I: Clone + Send + 'static, T: Send + 'static>(
        &self,
        operation: &'static str,
        items: Vec<I>,
        key_of: impl Fn(&I) -> &Vec<u8>,
        send: impl Fn(KvClient<Channel>, Context, Vec<I>) -> BoxFut<'static, (Option<RegionError>, T)>,
    ) -> Result<Vec<T>> {
        let size_of = |i: &I| key_of(i).len();
        self.run_batch_weighted(operation, items, &key_of, size_of, send)
            .await
    }

    /// [`RawClient::run_batch`] where each request carries at most [`GROUP_ITEMS_MAX`] items
    /// and [`GROUP_BYTES_MAX`] bytes (by `size_of`): a region's share of a large batch goes in
    /// several requests, each within the nodes' limits.
    ///
    /// A write `operation` numbers each request in the client's session when it is first sent,
    /// and its items keep that number through every retry (regrouped by region, never with
    /// another number's items), so a region that applied them skips them. A number's request
    /// never spans a key of the same number sent elsewhere in the same round (the proof in
    /// docs/design.md "Exactly-once writes" needs it).
    pub(crate) async fn run_batch_weighted<I: Clone + Send + 'static, T: Send + 'static>(
        &self,
        operation: &'static str,
        items: Vec<I>,
        key_of: impl Fn(&I) -> &Vec<u8>,
        size_of: impl Fn(&I) -> usize,
        send: impl Fn(KvClient<Channel>, Context, Vec<I>) -> BoxFut<'static, (Option<RegionError>, T)>,
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + self.config.timeout;
        let mut backoff = Backoff::new(deadline);
        let numbered = writes(operation);
        let mut pending: Vec<(Option<Arc<Ticket>>, I)> =
            items.into_iter().map(|i| (None, i)).collect();
        let mut results = Vec::new();
        let mut round = 0usize;
        let mut last_error = String::from("none");
        while !pending.is_empty() {
            // Group by region (and session number), each group within the request limits.
            let mut groups: Vec<Group<I>> = Vec::new();
            let mut unrouted = Vec::new();
            for (ticket, item) in pending.drain(..) {
                match self.route(key_of(&item)).await {
                    Ok(route) => {
                        let size = size_of(&item);
                        match groups.iter_mut().rev().find(|g| {
                            g.route.region.id == route.region.id
                                && same_ticket(&g.ticket, &ticket)
                                && (ticket.is_some()
                                    || (g.items.len() < GROUP_ITEMS_MAX
                                        && g.bytes + size <= GROUP_BYTES_MAX))
                        }) {
                            Some(g) => {
                                g.items.push(item);
                                g.bytes += size;
                            }
                            None => groups.push(Group {
                                route,
                                ticket,
                                items: vec![item],
                                bytes: size,
                            }),
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        last_error = e.to_string();
                        unrouted.push((ticket, item));
                    }
                    Err(e) => return Err(e),
                }
            }
            if numbered {
                for g in groups.iter_mut().filter(|g| g.ticket.is_none()) {
                    g.ticket = Some(Arc::new(self.ticket(deadline).await?));
                }
                unrouted.extend(defer_overlapping(&mut groups, &key_of));
            }
            let attempts = groups.into_iter().map(|group| {
                let send = &send;
                async move {
                    let g = group.items.clone();
                    let session = group.ticket.as_ref().map(|t| t.write_session());
                    let outcome = self
                        .attempt_with(
                            &group.route,
                            round,
                            self.read_route(operation),
                            session,
                            move |client, context| send(client, context, g.clone()),
                        )
                        .await;
                    (outcome, group)
                }
            });
            let mut immediately = unrouted.is_empty();
            for (outcome, group) in join_all(attempts).await {
                match outcome? {
                    Attempt::Done(v) => results.push(v),
                    Attempt::Retry {
                        reason,
                        immediately: now,
                        ..
                    } => {
                        last_error = reason;
                        immediately &= now;
                        let ticket = group.ticket;
                        pending.extend(group.items.into_iter().map(|i| (ticket.clone(), i)));
                    }
                }
            }
            pending.extend(unrouted);
            if pending.is_empty() {
                break;
            }
            round += 1;
            let in_time = if immediately && Instant::now() < deadline {
                true
            } else {
                backoff.wait().await
            };
            if !in_time {
                return Err(self.timeout(operation, last_error));
            }
        }
        Ok(results)
    }

    /// A number in the client's session for a new write, opening a session (a TSO timestamp
    /// as its id) when there is none, it is old, or its window is full.
    async fn ticket(&self, deadline: Instant) -> Result<Ticket> {
        let mut backoff = Backoff::new(deadline);
        loop {
            if let Some(ticket) = self.shared.sessions.ticket() {
                return Ok(ticket);
            }
            match self.pd.tso(1).await {
                Ok(id) => self.shared.sessions.open(id),
                Err(e) if e.is_retryable() => {
                    if !backoff.wait().await {
                        return Err(self.timeout("open a write session", e.to_string()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn route(&self, key: &[u8]) -> Result<RegionRoute> {
        if let Some(route) = self.shared.regions.locate(key) {
            return Ok(route);
        }
        let route = self.pd.get_region(key).await?;
        self.shared.regions.insert(route.clone());
        Ok(route)
    }

    async fn store_client(&self, store_id: u64) -> Result<KvClient<Channel>> {
        if let Some(c) = self.shared.stores.lock().get(&store_id) {
            return Ok(c.clone());
        }
        let store = self.pd.get_store(store_id).await?;
        let client = KvClient::new(channel_to(&store.address)?)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        self.shared.stores.lock().insert(store_id, client.clone());
        Ok(client)
    }

    /// The replica a follower read goes to in `round`: followers first, then the leader (a
    /// follower read may be served by any replica, and the leader the route names may be out
    /// of date); stores just found unreachable are passed over while others are left. Only
    /// follower reads pay for this choice.
    fn follower_read_peer(&self, peers: &[Peer], leader: Option<Peer>, round: usize) -> Peer {
        let followers = peers.iter().filter(|p| leader.is_none_or(|l| l.id != p.id));
        let mut candidates: Vec<Peer> = followers.copied().chain(leader).collect();
        let reachable: Vec<Peer> = candidates
            .iter()
            .copied()
            .filter(|p| !self.shared.recently_unreachable(p.store_id))
            .collect();
        if !reachable.is_empty() {
            candidates = reachable;
        }
        candidates[round % candidates.len()]
    }

    /// One attempt at one region: picks the leader (or, without one, a peer by `round`), sends,
    /// and turns region errors into cache updates. A replica or stale `read` picks a follower
    /// instead of the leader.
    async fn attempt<T>(
        &self,
        route: &RegionRoute,
        round: usize,
        read: ReadRoute,
        send: impl FnOnce(KvClient<Channel>, Context) -> BoxFut<'static, (Option<RegionError>, T)>,
    ) -> Result<Attempt<T>> {
        self.attempt_with(route, round, read, None, send).await
    }

    /// [`RawClient::attempt`] of a write numbered `session` in the client's session. A region
    /// that forgot the session ends the call: the write may have been applied by an earlier
    /// attempt, and only the caller can find out.
    async fn attempt_with<T>(
        &self,
        route: &RegionRoute,
        round: usize,
        read: ReadRoute,
        session: Option<WriteSession>,
        send: impl FnOnce(KvClient<Channel>, Context) -> BoxFut<'static, (Option<RegionError>, T)>,
    ) -> Result<Attempt<T>> {
        let region = &route.region;
        // A stale read falls back to an ordinary read at the leader while the region's
        // replicas are not ready for it.
        let stale = read == ReadRoute::Stale && !self.shared.stale_unready(region.id);
        let to_follower = stale || read == ReadRoute::Replica;
        let peer = match route.leader {
            _ if to_follower && !region.peers.is_empty() => {
                self.follower_read_peer(&region.peers, route.leader, round)
            }
            Some(leader) => leader,
            None if region.peers.is_empty() => {
                self.shared.regions.invalidate(region.id);
                return Ok(Attempt::Retry {
                    reason: format!("region {} has no peers", region.id),
                    immediately: false,
                });
            }
            None => region.peers[round % region.peers.len()],
        };
        let client = match self.store_client(peer.store_id).await {
            Ok(c) => c,
            Err(e) if e.is_retryable() => {
                return Ok(Attempt::Retry {
                    reason: e.to_string(),
                    immediately: false,
                })
            }
            Err(e) => return Err(e),
        };
        let context = Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            replica_read: read == ReadRoute::Replica,
            stale_read: stale,
            session,
        };
        let answer = tokio::time::timeout(self.config.attempt_timeout, send(client, context)).await;
        let (region_error, value) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(status)) => {
                return match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::FailedPrecondition => {
                        Err(ClientError::InvalidArgument(status.message().to_string()))
                    }
                    _ => {
                        // The node is down or unreachable: forget it and the leader it was.
                        self.shared.stores.lock().remove(&peer.store_id);
                        self.shared
                            .unreachable
                            .lock()
                            .insert(peer.store_id, Instant::now());
                        self.shared.regions.clear_leader(region.id);
                        Ok(Attempt::Retry {
                            reason: format!(
                                "store {}: {}: {}",
                                peer.store_id,
                                status.code(),
                                status.message()
                            ),
                            immediately: false,
                        })
                    }
                };
            }
            Err(_) => {
                self.shared.regions.clear_leader(region.id);
                return Ok(Attempt::Retry {
                    reason: format!(
                        "store {} did not answer within {:?}",
                        peer.store_id, self.config.attempt_timeout
                    ),
                    immediately: false,
                });
            }
        };
        let Some(err) = region_error else {
            return Ok(Attempt::Done(value));
        };
        let reason = format!(
            "region {} at store {}: {}",
            region.id, peer.store_id, err.message
        );
        let immediately = match err.kind {
            Some(region_error::Kind::NotLeader(nl)) => match nl.leader {
                Some(leader) if leader.id != peer.id => {
                    self.shared.regions.update_leader(region.id, leader);
                    true
                }
                _ => {
                    self.shared.regions.clear_leader(region.id);
                    false
                }
            },
            Some(region_error::Kind::EpochNotMatch(e)) => {
                self.shared.regions.invalidate(region.id);
                for r in e.current_regions {
                    self.shared.regions.insert(RegionRoute {
                        region: r,
                        leader: None,
                        health: None,
                    });
                }
                true
            }
            Some(region_error::Kind::StaleCommand(_)) => true,
            Some(region_error::Kind::DataIsNotReady(_)) => {
                self.shared
                    .stale_unready
                    .lock()
                    .insert(region.id, Instant::now());
                true
            }
            Some(region_error::Kind::ServerIsBusy(_)) => false,
            Some(region_error::Kind::SessionExpired(_)) => {
                return Err(ClientError::Ambiguous {
                    operation: "raw write",
                    detail: reason,
                });
            }
            _ => {
                self.shared.regions.invalidate(region.id);
                false
            }
        };
        Ok(Attempt::Retry {
            reason,
            immediately,
        })
    }
}
