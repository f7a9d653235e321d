//! Durable state in the data directory: module bytes by digest, precompiled artifacts, and the
//! route table with each route's version history in an embedded transactional database.
//!
//! Layout of the data directory:
//!
//! * `handoff.redb` — the database (redb: copy-on-write B-trees with checksummed commits, so a
//!   crash at any moment leaves the last committed transaction intact). Tables: `routes`
//!   (name → [`RouteRecord`] as JSON, history included) and `modules` (digest →
//!   [`ModuleRecord`]).
//! * `modules/<hex>.wasm` — uploaded component bytes, named by their sha256.
//! * `artifacts/<hex>.<engine-key>.cwasm` — the compiled component for this exact engine
//!   configuration and wasmtime version; any other build recompiles instead of loading it.
//!
//! Files are written to a temporary name, fsynced, renamed into place and the directory fsynced,
//! so a file under its final name is always complete. Nothing here runs on the request path.
//!
//! Artifacts are loaded as native code, so whoever can write the data directory can run code
//! in the server. The directories are created mode 0700 and the files 0600, and a data
//! directory (or subdirectory, or database) that another user could write is refused
//! ([`UntrustedDataDir`]) before anything is read from it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::version::Digest;

const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");

/// A route as it is kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteRecord {
    /// Its path prefix.
    pub prefix: String,
    /// The active version's digest.
    pub active: String,
    /// The active version's config.
    pub config: Vec<(String, String)>,
    /// Every activation, oldest first, at most the retention limit.
    pub history: Vec<HistoryEntry>,
    /// The route's limits (absent in records written before limits existed: the defaults).
    #[serde(default)]
    pub limits: Option<crate::version::Limits>,
    /// The route's outbound allow-list, as rule texts.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// The directory (under `--guest-dirs`) mounted at `/data`.
    #[serde(default)]
    pub dir: Option<String>,
}

/// One activation of a version on a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// The version's digest.
    pub version: String,
    /// Component size.
    pub size_bytes: u64,
    /// When it was activated, milliseconds since the Unix epoch.
    pub activated_at_ms: u64,
    /// Who activated it (the admin token's name once auth exists; `anonymous` until then).
    pub by: String,
    /// `deploy`, `rollback` or `activate`.
    pub action: String,
    /// An optional label given at deploy (`stable`, `v1.2.0`...).
    pub label: Option<String>,
    /// An optional message given at deploy.
    pub message: Option<String>,
    /// The config it ran with.
    pub config: Vec<(String, String)>,
}

/// A stored module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleRecord {
    /// Size of the component bytes.
    pub size_bytes: u64,
    /// sha256 (hex) of the artifact file, when one was written.
    pub artifact_sha256: Option<String>,
    /// The engine key the artifact was compiled for.
    pub artifact_key: Option<String>,
    /// Uploaded with `POST /v1/modules` and kept until some route has used it.
    pub pinned: bool,
}

/// The data directory.
pub struct Persist {
    dir: PathBuf,
    db: Database,
    engine_key: String,
    pending: Mutex<HashSet<String>>,
    _temp: Option<tempfile::TempDir>,
}

/// Keeps a digest's files safe from garbage collection until dropped (its deploy committed or
/// failed).
pub struct Pending<'a> {
    persist: &'a Persist,
    digest: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.persist
            .pending
            .lock()
            .expect("pending poisoned")
            .remove(&self.digest);
    }
}

impl Persist {
    /// Opens (creating if needed) the data directory `dir`, or a temporary one deleted at exit
    /// when `dir` is `None`.
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
            create_private_dir(&path)?;
        }
        let db_path = dir.join("handoff.redb");
        prepare_private_file(&db_path)?;
        let db = Database::create(&db_path)
            .with_context(|| format!("opening the database `{}`", db_path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(ROUTES)?;
        txn.open_table(MODULES)?;
        txn.commit()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Self {
            dir,
            db,
            engine_key: format!("{:016x}", hasher.finish()),
            pending: Mutex::new(HashSet::new()),
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
            .join(format!("{}.wasm", hex(digest)))
    }

    fn artifact_path(&self, digest: &str, key: &str) -> PathBuf {
        self.dir.join("artifacts").join(format!(
            "{}.{key}.cwasm",
            digest.trim_start_matches("sha256:")
        ))
    }

    /// Marks `digest` as in the middle of a deploy: its files survive garbage collection until
    /// the returned guard is dropped. Call it before writing any file for `digest`; it waits
    /// for a collection in progress to finish.
    pub fn pending(&self, digest: &Digest) -> Pending<'_> {
        self.pending
            .lock()
            .expect("pending poisoned")
            .insert(digest.to_string());
        Pending {
            persist: self,
            digest: digest.to_string(),
        }
    }

    /// Stores module bytes durably (a no-op when already stored).
    pub fn save_module(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.module_path(digest);
        if path.exists() {
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

    /// Stores a compiled artifact durably; returns its sha256 (hex) for later checks.
    pub fn save_artifact(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<String> {
        write_durably(
            &self.artifact_path(digest.as_str(), &self.engine_key),
            bytes,
        )?;
        Ok(sha256_hex(bytes))
    }

    /// The artifact for `digest` compiled by this engine, if it exists and matches `sha256`.
    /// `Err` describes why it cannot be used (missing, for another engine, corrupt).
    pub fn read_artifact(&self, digest: &Digest, record: &ModuleRecord) -> Result<Vec<u8>, String> {
        let (Some(sha), Some(key)) = (&record.artifact_sha256, &record.artifact_key) else {
            return Err("no artifact was recorded".into());
        };
        if *key != self.engine_key {
            return Err("the artifact was compiled by another engine or handoff version".into());
        }
        let path = self.artifact_path(digest.as_str(), key);
        let bytes = fs::read(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
        if sha256_hex(&bytes) != *sha {
            return Err(format!(
                "`{}` is corrupt (its digest does not match)",
                path.display()
            ));
        }
        Ok(bytes)
    }

    /// Every stored route.
    pub fn routes(&self) -> anyhow::Result<Vec<(String, RouteRecord)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROUTES)?;
        let mut routes = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let record = serde_json::from_slice(value.value())
                .with_context(|| format!("route `{}` is unreadable", name.value()))?;
            routes.push((name.value().to_owned(), record));
        }
        Ok(routes)
    }

    /// One stored route.
    pub fn route(&self, name: &str) -> anyhow::Result<Option<RouteRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROUTES)?;
        let Some(value) = table.get(name)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(value.value())?))
    }

    /// One stored module.
    pub fn module(&self, digest: &Digest) -> anyhow::Result<Option<ModuleRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MODULES)?;
        let Some(value) = table.get(digest.as_str())? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(value.value())?))
    }

    /// Writes `route` (or deletes it, when `None`) and `modules`, in one durable transaction.
    pub fn commit(
        &self,
        route: Option<(&str, Option<&RouteRecord>)>,
        modules: &[(&Digest, &ModuleRecord)],
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut routes = txn.open_table(ROUTES)?;
            match route {
                Some((name, Some(record))) => {
                    routes.insert(name, serde_json::to_vec(record)?.as_slice())?;
                }
                Some((name, None)) => {
                    routes.remove(name)?;
                }
                None => {}
            }
            let mut table = txn.open_table(MODULES)?;
            for (digest, record) in modules {
                table.insert(digest.as_str(), serde_json::to_vec(record)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes modules, artifacts and records that no route's history references, that are not
    /// pinned, and that are not in `in_use` (active or draining in memory) nor pending (a
    /// deploy writes its files before its commit references them). Returns how many module
    /// records were removed.
    pub fn collect_garbage(&self, in_use: &HashSet<String>) -> anyhow::Result<usize> {
        // Held for the whole collection: a deploy marks its digest pending (and so waits for a
        // collection in progress) before it writes any file, so no file written after `keep`
        // was computed can be swept by this collection.
        let pending = self.pending.lock().expect("pending poisoned");
        let mut keep: HashSet<String> = in_use.clone();
        keep.extend(pending.iter().cloned());
        for (_, route) in self.routes()? {
            keep.extend(route.history.into_iter().map(|e| e.version));
            keep.insert(route.active);
        }
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut table = txn.open_table(MODULES)?;
            let mut doomed = Vec::new();
            for entry in table.iter()? {
                let (digest, value) = entry?;
                let record: ModuleRecord = serde_json::from_slice(value.value())?;
                if record.pinned {
                    keep.insert(digest.value().to_owned());
                } else if !keep.contains(digest.value()) {
                    doomed.push(digest.value().to_owned());
                }
            }
            for digest in doomed {
                table.remove(digest.as_str())?;
                removed.push(digest);
            }
        }
        txn.commit()?;
        // Files after the commit: a crash in between leaves only unreferenced files, which the
        // sweep below removes next time.
        for sub in ["modules", "artifacts"] {
            for entry in fs::read_dir(self.dir.join(sub))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(name.ends_with(".wasm") || name.ends_with(".cwasm")) {
                    continue;
                }
                let hex = name.split('.').next().unwrap_or("");
                if !keep.contains(&format!("sha256:{hex}")) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        drop(pending);
        Ok(removed.len())
    }
}

/// A data directory, one of its subdirectories or its database that users other than the one
/// running handoff could write (or replace): refused, since artifacts are loaded as native code.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing the data directory: {path} {why}; artifacts in it are loaded as native code, so \
     only the user running handoff may be able to write it. Fix it with `{fix}`"
)]
pub struct UntrustedDataDir {
    /// The directory or file.
    pub path: PathBuf,
    /// Who else could write it.
    pub why: String,
    /// The command that fixes it.
    pub fix: String,
}

/// Creates `dir` (and its missing parents) mode 0700 unless it exists, then refuses it if
/// another user could write it.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating `{}`", dir.display()))?;
    check_private(dir)
}

/// Refuses the database at `path` if another user could write it, makes it unreadable to
/// others (config values are often secrets), or creates it empty with mode 0600.
fn prepare_private_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match fs::metadata(path) {
            Ok(meta) => {
                check_private(path)?;
                if meta.permissions().mode() & 0o077 != 0 {
                    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("making `{}` mode 600", path.display()))?;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating `{}`", path.display()))?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading `{}`", path.display()));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refuses `path` (following symlinks) when a user other than this one (or root) owns it or
/// its group or other users may write it.
fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).with_context(|| format!("reading `{}`", path.display()))?;
        let me = rustix::process::geteuid().as_raw();
        let untrusted = |why: String, fix: String| UntrustedDataDir {
            path: path.to_owned(),
            why,
            fix,
        };
        if meta.uid() != me && meta.uid() != 0 {
            return Err(untrusted(
                format!("is owned by another user (uid {})", meta.uid()),
                format!("chown -R {me} {}", path.display()),
            )
            .into());
        }
        let mode = meta.mode();
        if mode & 0o022 != 0 {
            let who = if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            };
            return Err(untrusted(
                format!("is writable by {who} (mode {:o})", mode & 0o7777),
                format!("chmod go-w {}", path.display()),
            )
            .into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn hex(digest: &Digest) -> &str {
    digest.as_str().trim_start_matches("sha256:")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
