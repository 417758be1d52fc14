//! Instances registered through the admin API, kept in a JSON state file so they survive
//! restarts. Writes go to a temporary file that is synced and renamed over the old one, so
//! a crash leaves either the old or the new file, never half of one.
//!
//! Imports nothing from weir.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub pool: String,
    pub address: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct StateFile {
    version: u32,
    instances: Vec<Registration>,
}

const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}: cannot read the state file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a weir state file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: cannot write the state file: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    entries: Mutex<Vec<Registration>>,
}

impl Registry {
    /// Loads the state file at `path` (a missing file is an empty registry).
    pub fn load(path: Option<PathBuf>) -> Result<Self, RegistryError> {
        let entries = match &path {
            Some(path) => read_state(path)?,
            None => Vec::new(),
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    pub fn list(&self) -> Vec<Registration> {
        self.lock().clone()
    }

    /// Adds or replaces the registration of `pool`/`address` and persists.
    pub fn upsert(&self, registration: Registration) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        next.retain(|r| !(r.pool == registration.pool && r.address == registration.address));
        next.push(registration);
        self.persist(&next)?;
        *entries = next;
        Ok(())
    }

    /// Removes the registration of `pool`/`address`; returns whether there was one.
    pub fn remove(&self, pool: &str, address: &str) -> Result<bool, RegistryError> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        next.retain(|r| !(r.pool == pool && r.address == address));
        if next.len() == entries.len() {
            return Ok(false);
        }
        self.persist(&next)?;
        *entries = next;
        Ok(true)
    }

    /// Updates the stored weight, if `pool`/`address` is registered.
    pub fn set_weight(&self, pool: &str, address: &str, weight: u32) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        let mut changed = false;
        for r in next
            .iter_mut()
            .filter(|r| r.pool == pool && r.address == address)
        {
            r.weight = weight;
            changed = true;
        }
        if changed {
            self.persist(&next)?;
            *entries = next;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registration>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, entries: &[Registration]) -> Result<(), RegistryError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let state = StateFile {
            version: STATE_VERSION,
            instances: entries.to_vec(),
        };
        write_atomically(path, &state).map_err(|source| RegistryError::Write {
            path: path.clone(),
            source,
        })
    }
}

fn read_state(path: &Path) -> Result<Vec<Registration>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RegistryError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|source| RegistryError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(state.instances)
}

fn write_atomically(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    // Make the rename itself durable.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(address: &str, weight: u32) -> Registration {
        Registration {
            pool: "api".into(),
            address: address.into(),
            weight,
            zone: Some("z1".into()),
            metadata: BTreeMap::from([("version".into(), "1.2.3".into())]),
        }
    }

    #[test]
    fn survives_a_restart_and_replaces_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let registry = Registry::load(Some(path.clone())).unwrap();
        assert!(registry.list().is_empty());
        registry.upsert(registration("10.0.0.1:80", 1)).unwrap();
        registry.upsert(registration("10.0.0.2:80", 1)).unwrap();
        registry.upsert(registration("10.0.0.1:80", 5)).unwrap();
        registry.set_weight("api", "10.0.0.2:80", 7).unwrap();
        let reloaded = Registry::load(Some(path.clone())).unwrap();
        assert_eq!(
            reloaded.list(),
            [
                registration("10.0.0.2:80", 7),
                registration("10.0.0.1:80", 5)
            ]
        );
        assert!(reloaded.remove("api", "10.0.0.2:80").unwrap());
        assert!(!reloaded.remove("api", "10.0.0.2:80").unwrap());
        assert_eq!(Registry::load(Some(path.clone())).unwrap().list().len(), 1);
        // No temporary files are left behind.
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Registry::load(Some(path)).unwrap_err();
        assert!(err.to_string().contains("not a weir state file"), "{err}");
    }
}
