//! The GC safe point: versions committed before it may be dropped by the nodes, and reads below
//! it are refused. It never goes back. It advances on its own to `gc_life_time_ms` behind now,
//! but never past a *service safe point*: the oldest start_ts a client still reads at (clients
//! register theirs with a TTL while they have transactions running), nor past what an operator
//! set by hand.

use crate::cluster::MetaWrites;
use crate::meta_store::keys;
use crate::tso::compose_ts;
use crate::PlacementError;
use std::collections::BTreeMap;

/// Service safe points registered at most (each client registers one).
pub const SERVICES_MAX: usize = 100_000;
/// The longest a service safe point lives without renewal: a client that vanished holds GC
/// back for at most this long.
pub const SERVICE_TTL_MS_MAX: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServiceSafePoint {
    safe_point: u64,
    expires_ms: i64,
}

#[derive(Debug)]
pub struct GcSafePoints {
    safe_point: u64,
    /// 0: the safe point only moves when an operator sets it.
    life_time_ms: i64,
    services: BTreeMap<String, ServiceSafePoint>,
}

impl GcSafePoints {
    pub fn new(saved: u64, life_time_ms: i64) -> Self {
        GcSafePoints {
            safe_point: saved,
            life_time_ms,
            services: BTreeMap::new(),
        }
    }

    pub fn set_life_time_ms(&mut self, life_time_ms: i64) {
        assert!(life_time_ms >= 0, "validated by the config");
        self.life_time_ms = life_time_ms;
    }

    fn min_service(&mut self, now_ms: i64) -> Option<u64> {
        self.services.retain(|_, s| s.expires_ms > now_ms);
        self.services.values().map(|s| s.safe_point).min()
    }

    fn set(&mut self, safe_point: u64, writes: &mut MetaWrites) {
        assert!(
            safe_point >= self.safe_point,
            "the GC safe point never goes back"
        );
        if safe_point > self.safe_point {
            self.safe_point = safe_point;
            writes.put(
                keys::GC_SAFE_POINT.to_vec(),
                safe_point.to_be_bytes().to_vec(),
            );
            writes.sync = true;
        }
    }

    /// The safe point now, advanced first if the life time allows.
    pub fn current(&mut self, now_ms: i64, writes: &mut MetaWrites) -> u64 {
        if self.life_time_ms > 0 {
            let mut target = compose_ts((now_ms - self.life_time_ms).max(0), 0);
            if let Some(min) = self.min_service(now_ms) {
                target = target.min(min);
            }
            if target > self.safe_point {
                self.set(target, writes);
            }
        }
        self.safe_point
    }

    /// An operator's safe point: refused when it would go back, lie past the last timestamp
    /// handed out (`tso_last`), or pass a live service.
    pub fn set_by_hand(
        &mut self,
        safe_point: u64,
        now_ms: i64,
        tso_last: u64,
        writes: &mut MetaWrites,
    ) -> Result<u64, PlacementError> {
        if safe_point < self.safe_point {
            return Err(PlacementError::InvalidArgument(format!(
                "GC safe point {safe_point} is below the current one {}; it never goes back",
                self.safe_point
            )));
        }
        if safe_point > tso_last {
            return Err(PlacementError::InvalidArgument(format!(
                "GC safe point {safe_point} is in the future (the last timestamp handed out is {tso_last})"
            )));
        }
        if let Some(min) = self.min_service(now_ms) {
            if safe_point > min {
                return Err(PlacementError::InvalidArgument(format!(
                    "GC safe point {safe_point} would pass a running transaction (oldest start_ts {min})"
                )));
            }
        }
        self.set(safe_point, writes);
        Ok(self.safe_point)
    }

    /// Registers (or, with `ttl_ms` 0, removes) a service's safe point. Refused below the
    /// current GC safe point: what the service wants to read may be gone already.
    pub fn update_service(
        &mut self,
        service_id: &str,
        safe_point: u64,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<u64, PlacementError> {
        if service_id.is_empty() || service_id.len() > 128 {
            return Err(PlacementError::InvalidArgument(
                "service id must be 1..=128 bytes".into(),
            ));
        }
        if ttl_ms <= 0 {
            self.services.remove(service_id);
            return Ok(self.safe_point);
        }
        if ttl_ms > SERVICE_TTL_MS_MAX {
            return Err(PlacementError::InvalidArgument(format!(
                "service safe point TTL {ttl_ms} ms is above the limit of {SERVICE_TTL_MS_MAX} ms; renew it instead"
            )));
        }
        if safe_point < self.safe_point {
            return Err(PlacementError::InvalidArgument(format!(
                "service safe point {safe_point} is below the GC safe point {}: versions it needs may be gone",
                self.safe_point
            )));
        }
        if !self.services.contains_key(service_id) && self.services.len() >= SERVICES_MAX {
            self.min_service(now_ms);
            if self.services.len() >= SERVICES_MAX {
                return Err(PlacementError::InvalidArgument(format!(
                    "{SERVICES_MAX} service safe points are registered already"
                )));
            }
        }
        self.services.insert(
            service_id.to_string(),
            ServiceSafePoint {
                safe_point,
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        Ok(self.safe_point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_point_trails_now_by_the_life_time_and_never_passes_a_live_service() {
        let mut gc = GcSafePoints::new(0, 10_000);
        let mut w = MetaWrites::default();
        assert_eq!(gc.current(100_000, &mut w), compose_ts(90_000, 0));
        gc.update_service("client-a", compose_ts(95_000, 0), 15_000, 100_000)
            .unwrap();
        assert_eq!(gc.current(110_000, &mut w), compose_ts(95_000, 0));
        // Once the service's TTL runs out, it holds nothing back.
        assert_eq!(gc.current(120_000, &mut w), compose_ts(110_000, 0));
        assert!(!w.puts.is_empty() && w.sync, "every advance is persisted");
    }

    #[test]
    fn it_never_goes_back_and_refuses_what_would_break_a_service() {
        let mut gc = GcSafePoints::new(compose_ts(50_000, 0), 0);
        let tso = compose_ts(100_000, 5);
        let mut w = MetaWrites::default();
        assert_eq!(
            gc.current(1_000_000, &mut w),
            compose_ts(50_000, 0),
            "life time 0: manual only"
        );
        assert!(gc
            .set_by_hand(compose_ts(40_000, 0), 100_000, tso, &mut w)
            .is_err());
        assert!(
            gc.set_by_hand(tso + 1, 100_000, tso, &mut w).is_err(),
            "future"
        );
        assert!(gc
            .update_service("old", compose_ts(10_000, 0), 1_000, 100_000)
            .is_err());
        gc.update_service("s", compose_ts(60_000, 0), 1_000, 100_000)
            .unwrap();
        assert!(gc
            .set_by_hand(compose_ts(70_000, 0), 100_000, tso, &mut w)
            .is_err());
        assert_eq!(
            gc.set_by_hand(compose_ts(60_000, 0), 100_000, tso, &mut w)
                .unwrap(),
            compose_ts(60_000, 0)
        );
        gc.update_service("s", 0, 0, 100_000).unwrap();
        assert_eq!(
            gc.set_by_hand(compose_ts(70_000, 0), 100_000, tso, &mut w)
                .unwrap(),
            compose_ts(70_000, 0)
        );
    }
}
