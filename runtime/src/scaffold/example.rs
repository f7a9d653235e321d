//! `handoff new NAME --from EXAMPLE`: a copy of one of the checkout's examples whose manifest
//! stands alone (named NAME, its workspace settings written out, path dependencies absolute).

use std::path::Path;

use crate::exit::{self, Failure};

/// `handoff new NAME --from EXAMPLE`: the files of the checkout's `examples/EXAMPLE`, its
/// manifest made to stand alone: named NAME, the settings it took from the examples' workspace
/// written out, every path dependency (the SDK's `../../guest-sdk` among them) made absolute,
/// and a `[workspace]` table of its own.
pub(super) fn example_files(
    name: &str,
    example: &str,
    sdk: &Path,
) -> Result<Vec<(String, String)>, Failure> {
    let examples = sdk
        .parent()
        .map(|checkout| checkout.join("examples"))
        .unwrap_or_default();
    let known = example_names(&examples);
    let source = examples.join(example);
    if !known.iter().any(|k| k == example) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "there is no example `{}` in {}; choose one of: {}",
                example.escape_debug(),
                examples.display(),
                known.join(", ")
            ),
        ));
    }
    let unreadable = |path: &Path, error: String| {
        Failure::new(
            exit::LOCAL,
            format!("cannot read {}: {error}", path.display()),
        )
    };
    let read_toml = |path: &Path| -> Result<toml::Table, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e.to_string()))?;
        toml::from_str(&text).map_err(|e| unreadable(path, e.to_string()))
    };
    let workspace = read_toml(&examples.join("Cargo.toml"))?;
    let workspace = workspace
        .get("workspace")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    let mut manifest = read_toml(&source.join("Cargo.toml"))?;
    standalone_manifest(&mut manifest, &workspace, name, &source, sdk);
    if let Some(profile) = examples_profile(&examples) {
        manifest.insert("profile".into(), profile);
    }
    manifest.insert("workspace".into(), toml::Value::Table(toml::Table::new()));
    let mut files = vec![(
        "Cargo.toml".to_owned(),
        format!(
            "# Copied from handoff's examples/{example} by `handoff new --from {example}`.\n{}",
            toml::to_string(&manifest).expect("a TOML table serializes")
        ),
    )];
    copy_tree(&source, &source, &mut files).map_err(|e| unreadable(&source, e.to_string()))?;
    if !files.iter().any(|(path, _)| path == ".gitignore") {
        files.push((".gitignore".to_owned(), "/target\n".to_owned()));
    }
    Ok(files)
}

/// The examples a checkout has: the directories of `examples/` with a `Cargo.toml`, sorted.
fn example_names(examples: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(examples)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The examples workspace's `[profile]` table, so a copy builds as the example does.
fn examples_profile(examples: &Path) -> Option<toml::Value> {
    let text = std::fs::read_to_string(examples.join("Cargo.toml")).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("profile").cloned()
}

/// Rewrites an example's manifest to build outside the examples' workspace.
fn standalone_manifest(
    manifest: &mut toml::Table,
    workspace: &toml::Table,
    name: &str,
    source: &Path,
    sdk: &Path,
) {
    let inherited =
        |section: &str, key: &str| workspace.get(section).and_then(|s| s.get(key)).cloned();
    if let Some(package) = manifest
        .get_mut("package")
        .and_then(toml::Value::as_table_mut)
    {
        for (key, value) in package.iter_mut() {
            if is_inherited(value)
                && let Some(from) = inherited("package", key)
            {
                *value = from;
            }
        }
        package.insert("name".into(), toml::Value::String(name.to_owned()));
    }
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = manifest
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
        else {
            continue;
        };
        for (dep, value) in deps.iter_mut() {
            if is_inherited(value)
                && let Some(from) = inherited("dependencies", dep)
            {
                let mut merged = match from {
                    toml::Value::Table(table) => table,
                    version => toml::Table::from_iter([("version".to_owned(), version)]),
                };
                if let Some(own) = value.as_table() {
                    for (key, own) in own.iter().filter(|(key, _)| *key != "workspace") {
                        merged.insert(key.clone(), own.clone());
                    }
                }
                *value = toml::Value::Table(merged);
            }
            let Some(table) = value.as_table_mut() else {
                continue;
            };
            let path = if dep == "handoff-sdk" {
                Some(sdk.to_path_buf())
            } else {
                table
                    .get("path")
                    .and_then(toml::Value::as_str)
                    .map(|relative| {
                        let joined = source.join(relative);
                        joined.canonicalize().unwrap_or(joined)
                    })
            };
            if let Some(path) = path {
                table.insert(
                    "path".into(),
                    toml::Value::String(path.display().to_string()),
                );
            }
        }
    }
}

/// `key.workspace = true`: a value a member takes from its workspace.
fn is_inherited(value: &toml::Value) -> bool {
    value
        .get("workspace")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false)
}

/// Adds every file under `dir` (but the manifest, lockfile, `target/` and hidden entries other
/// than `.gitignore`) to `files`, by path relative to `root`.
fn copy_tree(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let relative = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let skipped = (file_name.starts_with('.') && file_name != ".gitignore")
            || (dir == root && ["Cargo.toml", "Cargo.lock", "target"].contains(&&*file_name));
        if skipped {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(root, &path, files)?;
        } else {
            files.push((relative, std::fs::read_to_string(&path)?));
        }
    }
    Ok(())
}
