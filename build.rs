//! Compiles `proto/hotline/workorder/v1/workorder.proto` (the work-order gRPC contract) with
//! protox, a protobuf compiler in Rust, so a fresh machine needs no `protoc`. The descriptor
//! set (with the well-known types it imports) is kept for gRPC server reflection.

const PROTO: &str = "proto/hotline/workorder/v1/workorder.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("workorder_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Maps in key order: a command encodes the same way every time, so a repeated command can
    // be told from a different one with the same id by its bytes.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
