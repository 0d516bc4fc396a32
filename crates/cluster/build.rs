//! Compiles `proto/cluster.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_dir}/cluster.proto");
    // Relative, so resolved against this checkout's package root each time: cargo hashes path packages by their
    // place in the workspace, so two checkouts sharing a target directory (CI's cache) share this script's run,
    // and an absolute path would keep watching the file of whichever checkout ran it last.
    println!("cargo:rerun-if-changed=../../proto/cluster.proto");
    let fds = protox::compile([file.as_str()], [proto_dir])?;
    // `bytes` fields as `Bytes`: forwarded packets and Raft messages move without a copy.
    tonic_prost_build::configure().build_server(true).build_client(true).bytes(".").compile_fds(fds)?;
    Ok(())
}
