//! Compiles the `.proto` files under `proto/proto` with the system `protoc`
//! (installed by `scripts/setup.sh`; `PROTOC` overrides its path).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sluice/raft/v1/raft.proto",
        "proto/sluice/admin/v1/admin.proto",
        "proto/sluice/admin/v1/events.proto",
        "proto/sluice/admin/v1/consumers.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().bytes(".").compile_protos(&protos, &["proto"])?;
    Ok(())
}
