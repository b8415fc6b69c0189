//! Compiles the wire definitions with the protoc binary that `protoc-bin-vendored` ships, so a
//! fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/metapb.proto",
        "proto/errorpb.proto",
        "proto/kvrpcpb.proto",
        "proto/mvccpb.proto",
        "proto/raftpb.proto",
        "proto/pdpb.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &["proto"])?;
    // etcd's KV API, as a client only: the benchmark suite runs the same load against etcd.
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&["proto/etcd.proto"], &["proto"])?;
    Ok(())
}
