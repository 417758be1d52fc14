//! The deployment files cannot run here (no Docker engine); check what can be checked.

use std::path::Path;

#[test]
fn compose_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/weir.compose.toml");
    let config = weir::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.pools["app"].endpoints.len(), 2);
}

#[test]
fn example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/weir.toml");
    weir::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn compose_file_names_the_services_and_mounts_the_config() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    for needle in [
        "weir:",
        "redis:",
        "upstream-a:",
        "upstream-b:",
        "./deploy/weir.compose.toml:/etc/weir/weir.toml",
        "127.0.0.1:9901:9901",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks {needle}"
        );
    }
}
