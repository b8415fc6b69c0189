//! Wire definitions of ringkv and the wire-level facts every component shares: how user keys
//! are encoded into the ordered keyspace that regions cut up (`keys`), the request size limits
//! (`limits`), which regions may merge (`region`), and the layout of a timestamp (`tso`).

pub mod keys;
pub mod limits;
pub mod region;
pub mod tso;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod metapb {
    tonic::include_proto!("metapb");
}
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod errorpb {
    tonic::include_proto!("errorpb");
}
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod kvrpcpb {
    tonic::include_proto!("kvrpcpb");
}
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod raftpb {
    tonic::include_proto!("raftpb");
}
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pdpb {
    tonic::include_proto!("pdpb");
}

/// etcd's KV API (client side, the part the benchmark suite uses).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub use prost::Message;
