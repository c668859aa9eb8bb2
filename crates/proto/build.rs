//! Compiles `proto/` once for the whole workspace, with a vendored protoc (no system install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Handed to prost directly: edition 2024 makes `std::env::set_var("PROTOC", ..)` unsafe.
    // Read when the script runs, not baked in when it is compiled: a target directory shared by
    // two checkouts reuses the compiled script.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "amba/affiliate/v1/conversions.proto",
        "amba/affiliate/internal/v1/common.proto",
        "amba/affiliate/internal/v1/enrollment.proto",
        "amba/affiliate/internal/v1/attribution.proto",
        "amba/affiliate/internal/v1/commission.proto",
        "amba/affiliate/internal/v1/payout.proto",
        "amba/affiliate/internal/v1/notification.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &paths, &[root])?;
    Ok(())
}
