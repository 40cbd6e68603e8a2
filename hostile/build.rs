//! Generates this crate's own copy of the control protocol from ../control/proto/blit.proto
//! (the control crate keeps its generated types private). No system protoc: protox parses the
//! proto in Rust, tonic-prost-build generates the client and the server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../control/proto");
    let fds = protox::compile(["../control/proto/blit.proto"], ["../control/proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
