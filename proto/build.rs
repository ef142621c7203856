//! Compiles the `.proto` files under `proto/proto` with the system `protoc`
//! (installed by `scripts/setup.sh`; `PROTOC` overrides its path).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sluice/raft/v1/raft.proto",
        "proto/sluice/admin/v1/admin.proto",
        "proto/sluice/admin/v1/events.proto",
        "proto/sluice/admin/v1/consumers.proto",
        "proto/sluice/admin/v1/serving.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let (raft, admin) = protos.split_at(1);
    tonic_prost_build::configure().bytes(".").compile_protos(raft, &["proto"])?;
    // The admin descriptor set serves gRPC server reflection on the admin port (`grpcurl` without .proto
    // files); the Raft transport is not served there, so it is not in the set.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("sluice_admin_descriptor.bin"))
        .compile_protos(admin, &["proto"])?;
    Ok(())
}
