//! Module bytes and compiled artifacts, as files in the data directory:
//!
//! * `modules/<hex>.wasm` — uploaded component bytes, named by their sha256;
//! * `artifacts/<hex>.<engine-key>.cwasm` — the compiled component for this exact engine
//!   configuration and handoff/wasmtime version, followed by the sha256 of those bytes (32
//!   bytes), so a truncated or altered artifact is recompiled instead of loaded. Any other build
//!   recompiles too, and its artifacts are swept.
//!
//! Files are written to a temporary name (mode 0600), fsynced, renamed into place and the
//! directory fsynced, so a file under its final name is always complete. The directories are
//! private ([`super::private`]). Nothing here runs on the request path.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::version::Digest;

/// The data directory's files.
pub struct Files {
    dir: PathBuf,
    engine_key: String,
    _temp: Option<tempfile::TempDir>,
}

impl Files {
    /// Opens (creating if needed) the data directory `dir`, or a temporary one deleted when
    /// this is dropped, when `dir` is `None`. `engine` names the artifacts it can load.
    pub fn open(dir: Option<&Path>, engine: &wasmtime::Engine) -> anyhow::Result<Self> {
        let (dir, temp) = match dir {
            Some(dir) => (dir.to_path_buf(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("handoff-ephemeral-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        for path in [dir.clone(), dir.join("modules"), dir.join("artifacts")] {
            super::private::create_private_dir(&path)?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            _temp: temp,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory is temporary (deleted at exit).
    pub fn is_ephemeral(&self) -> bool {
        self._temp.is_some()
    }

    /// The key naming artifacts this engine can load.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    fn module_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("modules")
            .join(format!("{}.wasm", digest.hex()))
    }

    fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("artifacts")
            .join(format!("{}.{}.cwasm", digest.hex(), self.engine_key))
    }

    /// Stores module bytes durably. A stored copy that is missing or corrupt (its digest does
    /// not match) is replaced; an intact one is left alone.
    pub fn save_module(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.module_path(digest);
        if fs::read(&path).is_ok_and(|stored| Digest::of(&stored) == *digest) {
            return Ok(());
        }
        write_durably(&path, bytes)
    }

    /// Reads module bytes, checking they still hash to `digest`.
    pub fn read_module(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.module_path(digest);
        let bytes = fs::read(&path)
            .with_context(|| format!("the module file `{}` is missing", path.display()))?;
        anyhow::ensure!(
            Digest::of(&bytes) == *digest,
            "the module file `{}` is corrupt (its digest does not match)",
            path.display()
        );
        Ok(bytes)
    }

    /// Stores a compiled artifact durably, followed by its sha256.
    pub fn save_artifact(&self, digest: &Digest, artifact: &[u8]) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(artifact.len() + 32);
        bytes.extend_from_slice(artifact);
        bytes.extend_from_slice(&Sha256::digest(artifact));
        write_durably(&self.artifact_path(digest), &bytes)
    }

    /// The artifact for `digest` compiled by this engine, checked against its sha256. `Err`
    /// says why it cannot be used (missing, truncated, corrupt).
    pub fn read_artifact(&self, digest: &Digest) -> Result<Vec<u8>, String> {
        let path = self.artifact_path(digest);
        let mut bytes = fs::read(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
        let Some(body) = bytes.len().checked_sub(32) else {
            return Err(format!("`{}` is truncated", path.display()));
        };
        if Sha256::digest(&bytes[..body])[..] != bytes[body..] {
            return Err(format!(
                "`{}` is corrupt (its digest does not match)",
                path.display()
            ));
        }
        bytes.truncate(body);
        Ok(bytes)
    }

    /// Removes module and artifact files whose digest `keep` rejects, and artifacts another
    /// engine compiled (they can never be loaded by this one). `keep` is asked once per file,
    /// just before it would be removed. Returns how many files were removed.
    pub fn sweep(&self, keep: &dyn Fn(&Digest) -> bool) -> usize {
        let mut removed = 0;
        for sub in ["modules", "artifacts"] {
            let Ok(entries) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut parts = name.split('.');
                let (Some(hex), Some(second)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Some(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                    continue;
                };
                let other_engine = second != "wasm" && second != self.engine_key;
                if (other_engine || !keep(&digest)) && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Writes `bytes` to `path` so that `path` is either absent or complete: temporary file,
/// fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("data files live in a directory");
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in `{}`", dir.display()))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path)
        .with_context(|| format!("renaming into `{}`", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Files {
        Files::open(None, &wasmtime::Engine::default()).unwrap()
    }

    #[test]
    fn a_corrupt_module_file_is_repaired_by_saving_the_bytes_again() {
        let files = files();
        let bytes = b"\0asm component".to_vec();
        let digest = Digest::of(&bytes);
        files.save_module(&digest, &bytes).unwrap();
        fs::write(files.module_path(&digest), b"garbage").unwrap();
        assert!(files.read_module(&digest).is_err());
        files.save_module(&digest, &bytes).unwrap();
        assert_eq!(files.read_module(&digest).unwrap(), bytes);
    }

    #[test]
    fn artifacts_carry_their_checksum_and_other_engines_are_swept() {
        let files = files();
        let digest = Digest::of(b"x");
        files.save_artifact(&digest, b"compiled").unwrap();
        assert_eq!(files.read_artifact(&digest).unwrap(), b"compiled");
        let path = files.artifact_path(&digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(
            files
                .read_artifact(&digest)
                .unwrap_err()
                .contains("corrupt")
        );
        fs::write(&path, b"short").unwrap();
        assert!(
            files
                .read_artifact(&digest)
                .unwrap_err()
                .contains("truncated")
        );

        let old = files
            .dir()
            .join("artifacts")
            .join(format!("{}.0123456789abcdef.cwasm", digest.hex()));
        fs::write(&old, b"old").unwrap();
        files.save_artifact(&digest, b"compiled").unwrap();
        assert_eq!(
            files.sweep(&|_| true),
            1,
            "only the other engine's artifact"
        );
        assert!(!old.exists());
        assert!(files.read_artifact(&digest).is_ok());
        assert_eq!(files.sweep(&|_| false), 1);
        assert!(files.read_artifact(&digest).is_err());
    }
}
