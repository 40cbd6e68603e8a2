//! Generates the gRPC code from proto/blit.proto without a system protoc: protox parses the
//! proto in Rust, tonic-prost-build turns the descriptors into code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/blit.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
