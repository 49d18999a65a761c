//! Generates the tonic/prost code for augur's protobuf API with a vendored protoc, so building
//! augur never needs a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let includes = [std::path::PathBuf::from("proto"), well_known];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("augur_descriptor.bin"))
        .compile_with_config(
            config,
            &[std::path::PathBuf::from("proto/augur/v1/augur.proto")],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
