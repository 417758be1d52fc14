//! Configuration: the TOML file model, its defaults, loading with precise errors, and
//! validation. A [`Config`] that comes out of [`load_file`] or [`load_str`] is valid.
//!
//! Validation reads no file: certificates are loaded by `tls::TlsMaterial` when the runtime
//! is built (and by `check-config`, which builds it too).
//!
//! May import: nothing else of weir.

mod alerting;
mod cache;
mod control;
pub mod defaults;
mod error;
mod model;
mod route;
mod validate;

use std::path::{Path, PathBuf};

pub use alerting::*;
pub use error::{ConfigError, Problem};
pub use model::*;
pub use route::*;
pub use validate::parse_endpoint_address;

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn load_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let config = parse(text, origin)?;
    let problems = validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_path_buf(),
            problems,
        })
    }
}

fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let parse_error = |key: String, err: &toml::de::Error| ConfigError::Parse {
        origin: PathBuf::from(origin),
        key,
        location: err
            .span()
            .map(|span| {
                let (line, column) = line_column(text, span.start);
                format!(" (line {line}, column {column})")
            })
            .unwrap_or_default(),
        reason: err.message().trim().to_owned(),
    };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| parse_error("(syntax)".into(), &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".into()
        } else {
            key
        };
        parse_error(key, e.inner())
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
