//! Ed25519 signing keys (ring), kept as PKCS#8 files with mode 0600 in the
//! data directory. A key's id is the first 16 hex digits of the SHA-256 of
//! its public key. Rotation adds a key and makes it current; old keys stay,
//! so everything they signed stays verifiable.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {0} is not a valid Ed25519 PKCS#8 key")]
    Invalid(String),
    #[error("generating a key failed")]
    Generate,
}

/// A public key as published at `/v1/keys` and used by `dsb receipt verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub key_id: String,
    /// Hex of the 32-byte Ed25519 public key.
    pub public_key: String,
    pub current: bool,
}

/// The id of a public key.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key))[..16].to_string()
}

/// The key directory of a data directory.
pub struct KeyRing {
    dir: PathBuf,
}

/// The current signing key.
pub struct Signer {
    pub key_id: String,
    pair: Ed25519KeyPair,
}

impl Signer {
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

impl KeyRing {
    /// Open the key directory, generating the first key if there is none.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let ring = KeyRing {
            dir: dir.to_path_buf(),
        };
        if !dir.join("CURRENT").exists() {
            ring.rotate()?;
        }
        Ok(ring)
    }

    /// Generate a new key and make it current.
    pub fn rotate(&self) -> Result<String, KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
        let id = key_id(pair.public_key().as_ref());
        let path = self.dir.join(format!("{id}.pk8"));
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(pkcs8.as_ref()).map_err(io)?;
        file.sync_all().map_err(io)?;
        let current = self.dir.join("CURRENT");
        let tmp = self.dir.join("CURRENT.tmp");
        std::fs::write(&tmp, &id).map_err(|source| KeyError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &current).map_err(|source| KeyError::Io {
            path: current,
            source,
        })?;
        Ok(id)
    }

    /// The current signing key.
    pub fn signer(&self) -> Result<Signer, KeyError> {
        let path = self.dir.join("CURRENT");
        let id = std::fs::read_to_string(&path).map_err(|source| KeyError::Io { path, source })?;
        self.load(id.trim())
    }

    fn load(&self, id: &str) -> Result<Signer, KeyError> {
        let path = self.dir.join(format!("{id}.pk8"));
        let bytes = std::fs::read(&path).map_err(|source| KeyError::Io { path, source })?;
        let pair =
            Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| KeyError::Invalid(id.to_string()))?;
        Ok(Signer {
            key_id: id.to_string(),
            pair,
        })
    }

    /// Every public key, current one flagged, sorted by id.
    pub fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError> {
        let current = self.signer()?.key_id;
        let io = |source| KeyError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "pk8")
                && let Some(id) = path.file_stem().and_then(|s| s.to_str())
            {
                let signer = self.load(id)?;
                keys.push(PublicKey {
                    key_id: id.to_string(),
                    public_key: hex::encode(signer.public_key()),
                    current: id == current,
                });
            }
        }
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(keys)
    }
}
