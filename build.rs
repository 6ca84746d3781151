//! Compiles `proto/workorder.proto` (the work-order gRPC contract) with protox, a protobuf
//! compiler in Rust, so a fresh machine needs no `protoc`. The descriptor set is kept for gRPC
//! server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workorder.proto");
    let descriptors = protox::compile(["proto/workorder.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("workorder_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
