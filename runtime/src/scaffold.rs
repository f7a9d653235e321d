//! `handoff new`: writes a guest crate that builds as it is with
//! `cargo build --release --target wasm32-wasip2`, and tests with plain `cargo test` on the
//! host, wherever it is created (outside the handoff checkout unless `--path` says otherwise).
//!
//! The guest SDK is not on crates.io, so the crate depends on it by absolute path: by default
//! the SDK of the checkout this binary was built from. It never overwrites anything: the crate's
//! directory must not exist yet.

mod example;

use std::path::{Path, PathBuf};

use crate::cli::{NewArgs, Wasi};
use crate::exit::{self, Failure};
use example::example_files;

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
    let dir = match args.path {
        Some(path) => path,
        None => {
            refuse_inside_checkout(&args.name, &sdk)?;
            PathBuf::from(&args.name)
        }
    };
    let files = match &args.from {
        None => files(&args.name, &sdk, args.wasi),
        Some(example) => example_files(&args.name, example, &sdk)?,
    };
    create(&dir, &files)?;
    Ok(Created {
        dir,
        sdk,
        wasi: args.wasi,
    })
}

/// Without `--path`, a crate is never created inside the handoff checkout its SDK belongs to:
/// a guest is the user's project, not a file of the repository (and run from the checkout,
/// `handoff new` would otherwise leave it there). `--path` puts it anywhere, on purpose.
fn refuse_inside_checkout(name: &str, sdk: &Path) -> Result<(), Failure> {
    let Some(checkout) = sdk.parent() else {
        return Ok(());
    };
    let Ok(here) = std::env::current_dir().and_then(|dir| dir.canonicalize()) else {
        return Ok(());
    };
    if !here.starts_with(checkout) {
        return Ok(());
    }
    Err(Failure::new(
        exit::USAGE,
        format!(
            "{} is inside the handoff checkout {}; a guest crate belongs in a directory of its \
             own: run `handoff new {name}` from another directory (e.g. `cd ..`), or pass \
             --path DIR to create it there anyway",
            here.display(),
            checkout.display()
        ),
    ))
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

/// Writes `files` into `dir`, which must not exist; removes it again if a write fails.
fn create(dir: &Path, files: &[(String, String)]) -> Result<(), Failure> {
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
    let written = files.iter().try_for_each(|(file, text)| {
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
fn files(name: &str, sdk: &Path, wasi: Wasi) -> Vec<(String, String)> {
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

// Handler logic runs on the host too: `cargo test` calls it like any function
// (`block_on` runs an async handler to its end).
#[cfg(test)]
mod tests {
    use handoff_sdk::{Body, block_on, http};

    use super::*;

    #[test]
    fn it_answers_with_the_path() {
        let request = http::Request::get(\"/greeting/hi\").body(Body::empty()).unwrap();
        let response = block_on(handle(request)).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.into_body().text().unwrap(), \"hello from /greeting/hi\\n\");
    }
}
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

// Handler logic runs on the host too: `cargo test` calls it like any function.
#[cfg(test)]
mod tests {
    use handoff_sdk::{Body, http};

    use super::*;

    #[test]
    fn it_answers_with_the_path() {
        let request = http::Request::get(\"/greeting/hi\").body(Body::empty()).unwrap();
        let response = handle(request).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.into_body().text().unwrap(), \"hello from /greeting/hi\\n\");
    }
}
",
            "a WASI 0.2 `wasi:http/proxy` component",
        ),
    };
    let handler = handler.to_owned();
    let readme = format!(
        "# {name}

A handoff request handler: {kind},
written with `handoff-sdk`. `src/lib.rs` is the handler.

Build it (it needs `rustup target add wasm32-wasip2` once):

```sh
cargo build --release --target wasm32-wasip2
```

The component is `target/wasm32-wasip2/release/{file}.wasm`.

## Test

```sh
cargo test
```

runs the handler's tests on this machine, like any Rust code (`src/lib.rs` has one).

## Develop

With `handoff` on your PATH (from a handoff checkout: `cargo install --path runtime --locked`):

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
    [
        ("Cargo.toml", manifest),
        ("src/lib.rs", handler),
        ("README.md", readme),
        (".gitignore", "/target\n".to_owned()),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text))
    .collect()
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
        let error = create(dir.path(), &files("hello", sdk, Wasi::P3)).unwrap_err();
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
                .find(|(file, _)| file == "src/lib.rs")
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
