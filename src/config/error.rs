use std::path::PathBuf;

/// A configuration that cannot be used, with where and why.
///
/// Displays as `FILE: KEY: REASON`, e.g. `config/weir.toml: routes[2].pool: unknown pool "apii"`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", origin.display())]
    Read {
        origin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {key}{location}: {reason}", origin.display())]
    Parse {
        origin: PathBuf,
        /// Dotted path of the offending key, e.g. `pools.api.endpoints[0].weight`.
        key: String,
        /// ` (line L, column C)` when known, else empty.
        location: String,
        reason: String,
    },
    #[error("{}: {}", origin.display(), format_problems(problems))]
    Invalid {
        origin: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One validation failure: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&p.key);
        out.push_str(": ");
        out.push_str(&p.reason);
    }
    out
}

impl ConfigError {
    /// The validation problems, empty for read and parse errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}
