//! A tiny MVCC store over the in-memory engine for the action tests.

use crate::actions::prewrite::{prewrite, Prewrite};
use crate::mvcc::{write_modifies, MvccReader, MvccTxn};
use crate::Result;
use ringkv_proto::kvrpcpb::{Mutation, Op};
use ringkv_proto::mvccpb::Lock;
use ringkv_storage::layout::{self, Cf};
use ringkv_storage::{KvEngine, KvWriteBatch, MemKv};

pub fn put(key: &[u8], value: &[u8]) -> Mutation {
    Mutation {
        op: Op::Put as i32,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

pub struct Store {
    kv: MemKv,
}

impl Store {
    pub fn new() -> Self {
        Store { kv: MemKv::new() }
    }

    pub fn reader(&self) -> MvccReader<'_> {
        MvccReader::new(&self.kv)
    }

    pub fn apply(&self, txn: MvccTxn) {
        let mut batch = KvWriteBatch::default();
        write_modifies(&mut batch, txn.into_modifies());
        self.kv.write(batch).unwrap();
    }

    pub fn req<'a>(
        &self,
        mutations: &'a [Mutation],
        primary: &'a [u8],
        start_ts: u64,
    ) -> Prewrite<'a> {
        Prewrite {
            mutations,
            primary,
            start_ts,
            lock_ttl_ms: 3_000,
            txn_size: mutations.len() as u64,
            one_pc_commit_ts: None,
        }
    }

    pub fn prewrite(&self, mutations: &[Mutation], primary: &[u8], start_ts: u64) -> Result<()> {
        let txn = prewrite(&self.reader(), &self.req(mutations, primary, start_ts))?;
        self.apply(txn);
        Ok(())
    }

    pub fn prewrite_ttl(
        &self,
        mutations: &[Mutation],
        primary: &[u8],
        start_ts: u64,
        ttl_ms: u64,
    ) -> Result<()> {
        let mut req = self.req(mutations, primary, start_ts);
        req.lock_ttl_ms = ttl_ms;
        let txn = prewrite(&self.reader(), &req)?;
        self.apply(txn);
        Ok(())
    }

    pub fn put_committed(&self, key: &[u8], value: &[u8], start_ts: u64, commit_ts: u64) {
        self.prewrite(&[put(key, value)], key, start_ts).unwrap();
        self.apply(
            crate::actions::commit::commit_keys(
                &self.reader(),
                start_ts,
                &[key.to_vec()],
                commit_ts,
            )
            .unwrap(),
        );
    }

    pub fn delete_committed(&self, key: &[u8], start_ts: u64, commit_ts: u64) {
        let m = Mutation {
            op: Op::Delete as i32,
            key: key.to_vec(),
            value: vec![],
        };
        self.prewrite(&[m], key, start_ts).unwrap();
        self.apply(
            crate::actions::commit::commit_keys(
                &self.reader(),
                start_ts,
                &[key.to_vec()],
                commit_ts,
            )
            .unwrap(),
        );
    }

    pub fn lock(&self, key: &[u8]) -> Option<Lock> {
        self.reader().load_lock(key).unwrap()
    }

    pub fn get(&self, key: &[u8], ts: u64) -> Option<Vec<u8>> {
        self.reader().get(key, ts).unwrap()
    }

    pub fn data_keys(&self, cf: Cf) -> usize {
        let (lo, hi) = layout::cf_range(cf, b"", b"");
        let mut n = 0;
        self.kv
            .scan(&lo, &hi, &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    }
}
