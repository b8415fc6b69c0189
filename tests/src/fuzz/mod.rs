//! The RPC fuzzer's parts (the test is `tests/tests/rpc_fuzz.rs`): what it knows of the live
//! cluster ([`World`], [`observe`]), how it draws request fields ([`Gen`]), and one batch of
//! requests of every type ([`batch`]). See docs/testing.md, "The RPC fuzzer".
//!
//! The fuzzer sends what an unauthenticated caller can get wrong, not what an authorised one
//! may legitimately order: membership changes go out with a wrong region or epoch, forged
//! region reports never claim a newer epoch, forged stores never take a real store's id, and
//! writes only touch keys outside the seed data. Who may order what is issue 22's roles.

mod batch;
mod gen;

pub use batch::batch;
pub use gen::Gen;

use futures::future::BoxFuture;
use ringkv_proto::metapb::Region;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Seed keys the fuzzer writes before it starts (raw; a quarter as many transactional ones).
pub const SEED_KEYS: usize = 60;

/// What the fuzzer knows of the live cluster, refreshed before each batch.
#[derive(Default, Clone)]
pub struct World {
    pub cluster_id: u64,
    pub regions: Vec<Region>,
    /// Node address → its store id.
    pub stores: Vec<(String, u64)>,
    pub members: Vec<(String, u64, String)>,
    pub placement_leader: Option<String>,
    /// Region id → the address of the node that leads it.
    pub leaders: HashMap<u64, String>,
    pub now_ts: u64,
}

/// A request on its way: its kind and the call.
/// Its outcome: the gRPC status, and for placement calls the error type in the header.
pub type Call = (
    &'static str,
    BoxFuture<'static, Result<Option<i32>, tonic::Status>>,
);

pub fn seed_key(i: usize) -> String {
    format!("seed/{i}")
}

pub fn txn_seed_key(i: usize) -> String {
    format!("tseed/{i}")
}

/// The cluster as it is now, for the next batch's ids.
pub async fn observe(cluster_pd: &[String], nodes: &[String]) -> World {
    let mut world = World::default();
    let pd = ringkv_client::PdClient::connect(cluster_pd)
        .await
        .expect("placement answers");
    if let Ok(m) = pd.get_members().await {
        world.cluster_id = m.header.map_or(0, |h| h.cluster_id);
        world.members = m
            .members
            .iter()
            .map(|m| (m.name.clone(), m.member_id, m.endpoint.clone()))
            .collect();
        world.placement_leader = m.leader.map(|l| l.endpoint);
    }
    world.now_ts = pd.tso(1).await.unwrap_or(1 << 40);
    let mut regions: BTreeMap<u64, Region> = BTreeMap::new();
    for addr in nodes {
        if let Some(id) = crate::debug::store_id(addr).await {
            world.stores.push((addr.clone(), id));
        }
        for info in crate::debug::regions(addr).await.unwrap_or_default() {
            let Some(region) = info.region else { continue };
            if info.is_leader {
                world.leaders.insert(region.id, addr.clone());
            }
            let newer = regions.get(&region.id).is_none_or(|known| {
                let (k, r) = (
                    known.region_epoch.unwrap_or_default(),
                    region.region_epoch.unwrap_or_default(),
                );
                (r.version, r.conf_ver) > (k.version, k.conf_ver)
            });
            if newer {
                regions.insert(region.id, region);
            }
        }
    }
    world.regions = regions.into_values().collect();
    world
}

/// Outcomes of one kind of request: gRPC code → count.
pub type Tally = BTreeMap<&'static str, BTreeMap<String, usize>>;

pub fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}
