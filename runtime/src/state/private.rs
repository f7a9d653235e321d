//! The data directory is trusted code: artifacts in it are loaded as native code, so whoever can
//! write it can run code in the server. Its directories are created mode 0700 and its files
//! 0600, and a data directory (or subdirectory, or database) that another user could write, or
//! that another user owns, is refused ([`UntrustedDataDir`]) before anything is read from it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

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
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
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
pub fn prepare_private_file(path: &Path) -> anyhow::Result<()> {
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
pub fn check_private(path: &Path) -> anyhow::Result<()> {
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
