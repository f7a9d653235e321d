//! `handoff kv ...`: the key-value endpoints of the admin API (`/v1/routes/{name}/kv/...` for a
//! route's own bucket, `/v1/kv/{bucket}/...` for a shared one).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::Method;

use std::path::PathBuf;
use std::time::Duration;

use super::admin::{Admin, AdminClient, Payload, encode, print};
use crate::api;
use crate::exit::{self, Failure};

/// Which bucket: a route's own, or a shared one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    /// The route's own bucket (`default` in its guests).
    Route(String),
    /// A shared bucket (granted to routes with `deploy --kv NAME`).
    Shared(String),
}

/// What `handoff kv` does with a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Print every key, one per line, in order.
    Keys,
    /// Print a key's value (`--json`: with its version and expiry).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// Its value.
        value: Value,
        /// Let it expire after this long.
        ttl: Option<Duration>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Write every entry to stdout as JSON lines (what `Import` reads).
    Export,
    /// Write the entries of a JSON-lines file (`-`: stdin) into the bucket.
    Import {
        /// The file.
        file: PathBuf,
    },
}

/// A value to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// This text.
    Text(String),
    /// The bytes of this file (sent as text when they are UTF-8).
    File(PathBuf),
}

/// The URL of a bucket's endpoints.
fn base(bucket: &Bucket) -> String {
    match bucket {
        Bucket::Route(route) => format!("/v1/routes/{}/kv", encode(route)),
        Bucket::Shared(shared) => format!("/v1/kv/{}", encode(shared)),
    }
}

/// Percent-encodes a key for the URL, keeping its `/`s.
fn key_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

fn local(what: &str, error: impl std::fmt::Display) -> Failure {
    Failure::new(exit::LOCAL, format!("{what}: {error}"))
}

/// What an empty listing of `bucket` means: an error for a route or shared bucket that does
/// not exist, else the sentence that says the bucket is empty (for stderr: stdout stays the
/// keys, one per line).
async fn empty_bucket(client: &AdminClient, bucket: &Bucket) -> Result<String, Failure> {
    match bucket {
        Bucket::Route(route) => {
            let path = format!("/v1/routes/{}", encode(route));
            let reply = client.send(Method::GET, &path, None).await?;
            if reply.status == http::StatusCode::NOT_FOUND {
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "there is no route named `{}`; `handoff routes` lists them",
                        route.escape_debug()
                    ),
                ));
            }
            if !reply.status.is_success() {
                return Err(reply.refused("listing the keys"));
            }
            Ok(format!("the bucket of route {route} holds no keys"))
        }
        Bucket::Shared(shared) => {
            let routes: api::RouteList = client
                .call("listing the keys", Method::GET, "/v1/routes", None, false)
                .await?;
            let granted = routes
                .routes
                .iter()
                .any(|r| r.kv.iter().any(|name| name == shared));
            if !granted {
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "there is no shared bucket named `{}`: no route is granted it (deploy --kv NAME) and it holds no keys",
                        shared.escape_debug()
                    ),
                ));
            }
            Ok(format!("the shared bucket {shared} holds no keys"))
        }
    }
}

/// `handoff kv ...`: `op` on `bucket`.
pub async fn run(admin: &Admin, bucket: &Bucket, op: Op) -> Result<(), Failure> {
    let client = admin.client()?;
    let json = admin.json;
    match op {
        Op::Keys => {
            let mut cursor: Option<String> = None;
            let mut first = true;
            loop {
                let mut path = format!("{}/keys", base(bucket));
                if let Some(cursor) = &cursor {
                    path = format!("{path}?cursor={}", encode(cursor));
                }
                let reply = client.send(Method::GET, &path, None).await?;
                if first && reply.status == http::StatusCode::NOT_FOUND {
                    // A server that answers 404 for a bucket nothing was written to: an
                    // error if its route or shared bucket does not exist, else it is empty.
                    let empty = empty_bucket(&client, bucket).await?;
                    eprintln!("{empty}");
                    return Ok(());
                }
                if json {
                    reply.print();
                }
                if !reply.status.is_success() {
                    return Err(reply.refused("listing the keys"));
                }
                let page: api::KvKeys = client.read(&reply)?;
                if first && page.keys.is_empty() && page.cursor.is_none() {
                    // Nothing listed: say whether the bucket is empty or does not exist.
                    let empty = empty_bucket(&client, bucket).await?;
                    if !json {
                        eprintln!("{empty}");
                    }
                    return Ok(());
                }
                first = false;
                if !json {
                    let mut text = page.keys.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    print(text.as_bytes());
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        }
        Op::Get { key } => {
            let path = format!("{}/keys/{}", base(bucket), key_path(&key));
            let entry: api::KvEntry = client.call("get", Method::GET, &path, None, json).await?;
            if !json {
                match (entry.value, entry.base64) {
                    (Some(text), _) => print(text.as_bytes()),
                    (None, Some(encoded)) => {
                        let bytes = BASE64.decode(encoded).map_err(|e| {
                            Failure::new(exit::FAILED, format!("the value does not decode: {e}"))
                        })?;
                        print(&bytes);
                    }
                    (None, None) => {}
                }
            }
            Ok(())
        }
        Op::Put { key, value, ttl } => {
            let mut put = api::KvPut {
                ttl_ms: ttl.map(|d| d.as_millis() as u64),
                ..api::KvPut::default()
            };
            match value {
                Value::Text(text) => put.value = Some(text),
                Value::File(file) => {
                    let bytes = tokio::fs::read(&file)
                        .await
                        .map_err(|e| local(&format!("cannot read {}", file.display()), e))?;
                    match String::from_utf8(bytes) {
                        Ok(text) => put.value = Some(text),
                        Err(bytes) => put.base64 = Some(BASE64.encode(bytes.as_bytes())),
                    }
                }
            }
            let path = format!("{}/keys/{}", base(bucket), key_path(&key));
            let written: api::KvWritten = client
                .call("put", Method::PUT, &path, Some(Payload::json(&put)), json)
                .await?;
            if !json {
                print(format!("{} is at version {}\n", written.key, written.revision).as_bytes());
            }
            Ok(())
        }
        Op::Delete { key } => {
            let path = format!("{}/keys/{}", base(bucket), key_path(&key));
            let deleted: api::KvDeleted = client
                .call("delete", Method::DELETE, &path, None, json)
                .await?;
            if !json {
                let text = if deleted.deleted {
                    format!("deleted {}\n", deleted.key)
                } else {
                    format!("{} did not exist\n", deleted.key)
                };
                print(text.as_bytes());
            }
            Ok(())
        }
        Op::Export => {
            let path = format!("{}/export", base(bucket));
            let reply = client.send(Method::GET, &path, None).await?;
            if !reply.status.is_success() {
                if json {
                    print(&reply.body);
                }
                return Err(reply.refused("export"));
            }
            print(&reply.body);
            Ok(())
        }
        Op::Import { file } => {
            let bytes = if file.as_os_str() == "-" {
                use tokio::io::AsyncReadExt as _;
                let mut bytes = Vec::new();
                tokio::io::stdin()
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| local("cannot read stdin", e))?;
                bytes
            } else {
                tokio::fs::read(&file)
                    .await
                    .map_err(|e| local(&format!("cannot read {}", file.display()), e))?
            };
            let payload = Payload {
                bytes: Bytes::from(bytes),
                content_type: "application/x-ndjson",
                signature: None,
            };
            let path = format!("{}/import", base(bucket));
            let imported: api::KvImported = client
                .call("import", Method::POST, &path, Some(payload), json)
                .await?;
            if !json {
                let text = format!(
                    "imported {} keys into {} ({} already expired, skipped)\n",
                    imported.imported, imported.bucket, imported.expired
                );
                print(text.as_bytes());
            }
            Ok(())
        }
    }
}
