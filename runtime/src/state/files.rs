//! Module bytes and compiled artifacts, as files in the data directory:
//!
//! * `modules/<hex>.wasm` — uploaded component bytes, named by their sha256;
//! * `artifacts/<hex>.<engine-key>.cwasm` — the compiled component for this exact engine
//!   configuration and handoff/wasmtime version, followed by the sha256 of those bytes (32
//!   bytes), so a truncated or altered artifact is recompiled instead of loaded. Any other build
//!   recompiles too, and its artifacts are swept. There is one engine per WASI (0.2, 0.3; see
//!   `crate::engine`), each with its own key: the key an artifact is named by says which engine
//!   loads it.
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

use crate::digest::Digest;
use crate::engine::Wasi;

/// The data directory's files.
pub struct Files {
    dir: PathBuf,
    /// The key of both engines together (what a cluster node reports).
    engine_key: String,
    /// Each engine's key, by [`Wasi`]: the names of the artifacts it can load.
    keys: [String; 2],
    _temp: Option<tempfile::TempDir>,
}

/// `engine`'s compatibility key with this handoff release.
fn key_of(engine: &wasmtime::Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

impl Files {
    /// Opens (creating if needed) the data directory `dir`, or a temporary one deleted when
    /// this is dropped, when `dir` is `None`. `engines` (the WASI 0.2 engine, then the 0.3
    /// one) name the artifacts it can load.
    pub fn open(dir: Option<&Path>, engines: [&wasmtime::Engine; 2]) -> anyhow::Result<Self> {
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
        let keys = engines.map(key_of);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        keys.hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            keys,
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

    /// The key of this server's engines: servers with the same key load each other's
    /// artifacts.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    fn key(&self, wasi: Wasi) -> &str {
        match wasi {
            Wasi::P2 => &self.keys[0],
            Wasi::P3 => &self.keys[1],
        }
    }

    fn module_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("modules")
            .join(format!("{}.wasm", digest.hex()))
    }

    fn artifact_path(&self, digest: &Digest, wasi: Wasi) -> PathBuf {
        self.dir
            .join("artifacts")
            .join(format!("{}.{}.cwasm", digest.hex(), self.key(wasi)))
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

    /// Stores an artifact compiled by `wasi`'s engine durably, followed by its sha256.
    pub fn save_artifact(
        &self,
        digest: &Digest,
        wasi: Wasi,
        artifact: &[u8],
    ) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(artifact.len() + 32);
        bytes.extend_from_slice(artifact);
        bytes.extend_from_slice(&Sha256::digest(artifact));
        write_durably(&self.artifact_path(digest, wasi), &bytes)
    }

    /// The artifact for `digest` compiled by one of this server's engines, and which one,
    /// checked against its sha256. `Err` says why it cannot be used (missing, truncated,
    /// corrupt).
    pub fn read_artifact(&self, digest: &Digest) -> Result<(Wasi, Vec<u8>), String> {
        let (wasi, path) = Wasi::ALL
            .into_iter()
            .map(|wasi| (wasi, self.artifact_path(digest, wasi)))
            .find(|(_, path)| path.exists())
            .unwrap_or_else(|| (Wasi::P2, self.artifact_path(digest, Wasi::P2)));
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
        Ok((wasi, bytes))
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
                let other_engine = second != "wasm" && !self.keys.iter().any(|key| key == second);
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
        let p2 = wasmtime::Engine::new(wasmtime::Config::new().concurrency_support(false)).unwrap();
        let p3 = wasmtime::Engine::new(wasmtime::Config::new().concurrency_support(true)).unwrap();
        Files::open(None, [&p2, &p3]).unwrap()
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
        files.save_artifact(&digest, Wasi::P2, b"compiled").unwrap();
        assert_eq!(
            files.read_artifact(&digest).unwrap(),
            (Wasi::P2, b"compiled".to_vec())
        );
        let path = files.artifact_path(&digest, Wasi::P2);
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
        files.save_artifact(&digest, Wasi::P2, b"compiled").unwrap();
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

    #[test]
    fn each_engine_names_its_own_artifacts() {
        let files = files();
        let digest = Digest::of(b"y");
        assert_ne!(files.key(Wasi::P2), files.key(Wasi::P3));
        files.save_artifact(&digest, Wasi::P3, b"async").unwrap();
        assert_eq!(
            files.read_artifact(&digest).unwrap(),
            (Wasi::P3, b"async".to_vec()),
            "an artifact of the 0.3 engine says so"
        );
        assert_eq!(
            files.sweep(&|_| true),
            0,
            "both engines' artifacts are kept"
        );
    }
}
