//! The id allocator: unique ids for stores, regions and peers, never reused across restarts.

/// Ids persisted ahead in one step, so that most allocations need no disk write.
pub const ID_STEP: u64 = 1000;

/// The id allocator core. The edge persists `limit` durably whenever `alloc` says so.
#[derive(Debug)]
pub struct IdAllocator {
    next: u64,
    limit: u64,
}

impl IdAllocator {
    /// Starts after a (re)start: every id handed out before was below `saved_limit`.
    pub fn new(saved_limit: u64) -> Self {
        let start = saved_limit.max(1);
        IdAllocator {
            next: start,
            limit: start,
        }
    }

    /// Takes `count` consecutive ids. Returns the first, and the new limit to persist first if
    /// the persisted limit had to move.
    pub fn alloc(&mut self, count: u32) -> (u64, Option<u64>) {
        let count = u64::from(count.max(1));
        let first = self.next;
        self.next += count;
        let new_limit = if self.next > self.limit {
            self.limit = self.next + ID_STEP;
            Some(self.limit)
        } else {
            None
        };
        (first, new_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts() {
        let mut ids = IdAllocator::new(0);
        let (a, limit) = ids.alloc(3);
        assert_eq!(a, 1);
        let limit = limit.expect("first allocation persists a limit");
        let (b, none) = ids.alloc(1);
        assert_eq!((b, none), (4, None));
        let mut restarted = IdAllocator::new(limit);
        let (c, _) = restarted.alloc(1);
        assert!(c > b);
    }
}
