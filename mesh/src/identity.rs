//! The node's identity: an ed25519 key kept in the state directory. Its libp2p PeerId names the node
//! on the mesh, so it must survive restarts and never be shared between hosts.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;

/// File name of the node key inside the data directory.
pub const KEY_FILE: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read node key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write node key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "node key {path} is not a valid ed25519 key ({reason}); move it aside to let augur create a new \
         identity (the node then joins as a new peer)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// This node's key pair and the PeerId derived from it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    keypair: Keypair,
    peer_id: PeerId,
}

impl NodeIdentity {
    /// Loads `dir/node.key`, or creates it (mode 0600, written to a temporary file then renamed, so a
    /// crash never leaves half a key) when absent.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                    IdentityError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Self::from_keypair(keypair))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keypair = Keypair::generate_ed25519();
                write_key(&path, &keypair)?;
                Ok(Self::from_keypair(keypair))
            }
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    /// Loads `dir/node.key` if it exists (`None` if not); never creates one.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
                .map(|k| Some(Self::from_keypair(k)))
                .map_err(|e| IdentityError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    pub fn from_keypair(keypair: Keypair) -> Self {
        let peer_id = keypair.public().to_peer_id();
        Self { keypair, peer_id }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

fn write_key(path: &Path, keypair: &Keypair) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    write_secret(path, &bytes).map_err(err)
}

/// Writes a secret file: mode 0600, to a temporary file, fsynced, then renamed (a crash never leaves
/// half a key).
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = NodeIdentity::load_or_create(dir.path()).expect("create");
        let again = NodeIdentity::load_or_create(dir.path()).expect("load");
        assert_eq!(first.peer_id(), again.peer_id());
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(KEY_FILE), b"not a key").expect("write");
        let err = NodeIdentity::load_or_create(dir.path()).expect_err("corrupt key");
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    }
}
