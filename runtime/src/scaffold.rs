//! `handoff new`: writes a guest crate that builds as it is with
//! `cargo build --release --target wasm32-wasip2`, wherever it is created.
//!
//! The guest SDK is not on crates.io, so the crate depends on it by absolute path: by default
//! the SDK of the checkout this binary was built from. It never overwrites anything: the crate's
//! directory must not exist yet.

use std::path::{Path, PathBuf};

use crate::cli::{Failure, NewArgs, Wasi, exit};

/// The SDK of the checkout this binary was built from.
pub const BUILT_IN_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// What `handoff new` created.
#[derive(Debug)]
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The SDK it depends on (absolute).
    pub sdk: PathBuf,
    /// The WASI version of its handler.
    pub wasi: Wasi,
}

/// Runs `handoff new`.
pub fn run(args: NewArgs) -> Result<Created, Failure> {
    check_name(&args.name).map_err(|e| Failure::new(exit::USAGE, e))?;
    let sdk = find_sdk(args.sdk.as_deref())?;
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&args.name));
    create(&args.name, &dir, &sdk, args.wasi)?;
    Ok(Created {
        dir,
        sdk,
        wasi: args.wasi,
    })
}

/// A crate name that cargo accepts as a package and library name and handoff as a route name.
fn check_name(name: &str) -> Result<(), String> {
    const RESERVED: &[&str] = &[
        "test",
        "core",
        "std",
        "alloc",
        "proc_macro",
        "proc-macro",
        "handoff-sdk",
        "handoff_sdk",
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "gen",
        "macro",
        "override",
        "priv",
        "try",
        "typeof",
        "unsized",
        "virtual",
        "yield",
    ];
    let well_formed = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !well_formed {
        return Err(format!(
            "`{}` cannot name a guest crate: use a lowercase letter, then up to 63 lowercase \
             letters, digits, `-` or `_` (it is also the route name `handoff dev` serves it at)",
            name.escape_debug()
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "`{name}` is reserved by Rust or cargo; choose another crate name"
        ));
    }
    Ok(())
}

/// The SDK directory, absolute, checked to hold a `Cargo.toml`.
fn find_sdk(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let (path, hint) = match given {
        Some(path) => (path, "check the --sdk path"),
        None => (
            Path::new(BUILT_IN_SDK),
            "this binary was built from a handoff checkout that has moved; pass --sdk PATH/TO/guest-sdk",
        ),
    };
    let missing = |why: String| {
        Failure::new(
            exit::LOCAL,
            format!("the guest SDK is not at {}: {why}; {hint}", path.display()),
        )
    };
    let sdk = path.canonicalize().map_err(|e| missing(e.to_string()))?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(missing("it has no Cargo.toml".into()));
    }
    Ok(sdk)
}

/// Writes the crate into `dir`, which must not exist; removes it again if a write fails.
fn create(name: &str, dir: &Path, sdk: &Path, wasi: Wasi) -> Result<(), Failure> {
    let local = |what: &str, error: std::io::Error| {
        Failure::new(exit::LOCAL, format!("cannot {what}: {error}"))
    };
    if dir.exists() {
        return Err(Failure::new(
            exit::LOCAL,
            format!(
                "{} already exists; handoff new never overwrites: choose another --path, or remove it",
                dir.display()
            ),
        ));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| local(&format!("create {}", parent.display()), e))?;
    }
    std::fs::create_dir(dir).map_err(|e| local(&format!("create {}", dir.display()), e))?;
    let written = files(name, sdk, wasi).iter().try_for_each(|(file, text)| {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
    });
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(dir);
        return Err(local(
            &format!("write the crate into {}", dir.display()),
            error,
        ));
    }
    Ok(())
}

/// The crate's files: relative path and text.
fn files(name: &str, sdk: &Path, wasi: Wasi) -> Vec<(&'static str, String)> {
    // A TOML string, escaped as TOML wants (paths may hold `\` or `"`).
    let sdk_path = toml::Value::String(sdk.display().to_string()).to_string();
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A component is a dynamic library: `target/wasm32-wasip2/release/{file}.wasm`.
crate-type = ["cdylib"]

[dependencies]
# The handoff guest SDK is not on crates.io; this is the checkout `handoff new` came from.
handoff-sdk = {{ path = {sdk_path} }}

[profile.release]
opt-level = "s"
strip = "debuginfo"

# Its own workspace, so it builds wherever it is. To make it a member of an enclosing
# workspace instead, delete this table and add it to that workspace's `members`.
[workspace]
"#,
        file = name.replace('-', "_"),
    );
    let cargo_config = "\
# `cargo build` here builds the component (WASI 0.2 and 0.3 components both use this target).
[build]
target = \"wasm32-wasip2\"
"
    .to_owned();
    let (handler, kind) = match wasi {
        Wasi::P3 => (
            "\
use handoff_sdk::{Request, Response, Result};

/// Answers every request under the route's prefix. It is `async`: awaiting (the request body
/// with `req.into_body().read_bytes().await`, `handoff_sdk::time::sleep`) lets the instance
/// serve other requests meanwhile.
async fn handle(req: Request) -> Result<Response> {
    Ok(Response::new(format!(\"hello from {}\\n\", req.uri().path()).into()))
}

handoff_sdk::export!(async handle);
",
            "a WASI 0.3 `wasi:http/service` component (an `async fn` handler;\n\
             `handoff new --wasi 0.2` writes a blocking WASI 0.2 one)",
        ),
        Wasi::P2 => (
            "\
use handoff_sdk::{Request, Response, Result};

/// Answers every request under the route's prefix.
fn handle(req: Request) -> Result<Response> {
    Ok(Response::new(format!(\"hello from {}\\n\", req.uri().path()).into()))
}

handoff_sdk::export!(handle);
",
            "a WASI 0.2 `wasi:http/proxy` component",
        ),
    };
    let handler = handler.to_owned();
    let readme = format!(
        "# {name}

A handoff request handler: {kind},
written with `handoff-sdk`. `src/lib.rs` is the handler.

Build it (the target comes from `.cargo/config.toml`; it needs
`rustup target add wasm32-wasip2` once):

```sh
cargo build --release --target wasm32-wasip2
```

The component is `target/wasm32-wasip2/release/{file}.wasm`.

## Develop

```sh
handoff dev .
```

builds it, serves it at `http://127.0.0.1:8080/{name}`, and rebuilds and swaps it in on every
save; requests already running finish on the version they started on. A build that fails keeps
the last good version serving.

## Deploy to a running server

```sh
handoff deploy {name} target/wasm32-wasip2/release/{file}.wasm
handoff status {name}
```
",
        file = name.replace('-', "_"),
    );
    vec![
        ("Cargo.toml", manifest),
        (".cargo/config.toml", cargo_config),
        ("src/lib.rs", handler),
        ("README.md", readme),
        (".gitignore", "/target\n".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_cargo_and_routes() {
        assert!(check_name("hello").is_ok());
        assert!(check_name("my-api_2").is_ok());
        for bad in [
            "",
            "Hello",
            "2fast",
            "a/b",
            "a.b",
            "fn",
            "test",
            "handoff-sdk",
        ] {
            assert!(check_name(bad).is_err(), "{bad} accepted");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn it_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = dir.path();
        let error = create("hello", dir.path(), sdk, Wasi::P3).unwrap_err();
        assert_eq!(error.code, exit::LOCAL);
        assert!(error.message.contains("already exists"), "{error}");
    }

    #[test]
    fn the_manifest_names_the_sdk_by_absolute_path() {
        let files = files("my-api", Path::new("/opt/handoff/guest-sdk"), Wasi::P3);
        let manifest = &files[0].1;
        let parsed: toml::Table = toml::from_str(manifest).expect("valid TOML");
        assert_eq!(
            parsed["dependencies"]["handoff-sdk"]["path"].as_str(),
            Some("/opt/handoff/guest-sdk")
        );
        assert_eq!(parsed["lib"]["crate-type"][0].as_str(), Some("cdylib"));
        assert!(manifest.contains("release/my_api.wasm"));
    }

    #[test]
    fn the_handler_is_async_for_wasi_0_3_and_blocking_for_0_2() {
        let handler = |wasi| {
            files("api", Path::new("/sdk"), wasi)
                .into_iter()
                .find(|(file, _)| *file == "src/lib.rs")
                .unwrap()
                .1
        };
        let p3 = handler(Wasi::P3);
        assert!(p3.contains("async fn handle(req: Request)"), "{p3}");
        assert!(p3.contains("export!(async handle);"), "{p3}");
        let p2 = handler(Wasi::P2);
        assert!(p2.contains("\nfn handle(req: Request)"), "{p2}");
        assert!(p2.contains("export!(handle);"), "{p2}");
    }
}
