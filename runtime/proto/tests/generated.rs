//! The committed generated code must match what the .proto file generates.

use std::path::Path;

#[test]
fn generated_code_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile([root.join("proto/flotilla.proto")], [root.join("proto")])
        .expect("flotilla.proto compiles");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.path().join("flotilla.v1.rs")).expect("generated file");
    let committed_path = root.join("src/gen/flotilla.v1.rs");
    if std::env::var_os("FLOTILLA_REGEN").is_some() {
        std::fs::write(&committed_path, &fresh).expect("write generated code");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "runtime/proto/src/gen/flotilla.v1.rs is stale: run `FLOTILLA_REGEN=1 cargo test -p flotilla-proto`"
    );
}
