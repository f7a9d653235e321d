//! `handoff kv ...`: the key-value endpoints of the admin API (`/v1/routes/{name}/kv/...` for a
//! route's own bucket, `/v1/kv/{bucket}/...` for a shared one).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::Method;

use super::admin::{AdminClient, Payload, encode, print};
use crate::api;
use crate::cli::kv::{BucketArgs, KvArgs, KvCommand};
use crate::cli::{Failure, exit};

/// The URL of a bucket's endpoints.
fn base(bucket: &BucketArgs) -> String {
    match (&bucket.route, &bucket.bucket) {
        (Some(route), _) => format!("/v1/routes/{}/kv", encode(route)),
        (None, Some(shared)) => format!("/v1/kv/{}", encode(shared)),
        (None, None) => unreachable!("clap requires --route or --bucket"),
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
async fn empty_bucket(client: &AdminClient, bucket: &BucketArgs) -> Result<String, Failure> {
    match (&bucket.route, &bucket.bucket) {
        (Some(route), _) => {
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
        (None, Some(shared)) => {
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
        (None, None) => unreachable!("clap requires --route or --bucket"),
    }
}

/// `handoff kv ...`.
pub async fn run(args: KvArgs) -> Result<(), Failure> {
    match args.command {
        KvCommand::Keys(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let mut cursor: Option<String> = None;
            let mut first = true;
            loop {
                let mut path = format!("{}/keys", base(&args.bucket));
                if let Some(cursor) = &cursor {
                    path = format!("{path}?cursor={}", encode(cursor));
                }
                let reply = client.send(Method::GET, &path, None).await?;
                if first && reply.status == http::StatusCode::NOT_FOUND {
                    // A server that answers 404 for a bucket nothing was written to: an
                    // error if its route or shared bucket does not exist, else it is empty.
                    let empty = empty_bucket(&client, &args.bucket).await?;
                    eprintln!("{empty}");
                    return Ok(());
                }
                if args.admin.json {
                    reply.print();
                }
                if !reply.status.is_success() {
                    return Err(reply.refused("listing the keys"));
                }
                let page: api::KvKeys = client.read(&reply)?;
                if first && page.keys.is_empty() && page.cursor.is_none() {
                    // Nothing listed: say whether the bucket is empty or does not exist.
                    let empty = empty_bucket(&client, &args.bucket).await?;
                    if !args.admin.json {
                        eprintln!("{empty}");
                    }
                    return Ok(());
                }
                first = false;
                if !args.admin.json {
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
        KvCommand::Get(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let path = format!("{}/keys/{}", base(&args.bucket), key_path(&args.key));
            let entry: api::KvEntry = client
                .call("get", Method::GET, &path, None, args.admin.json)
                .await?;
            if !args.admin.json {
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
        KvCommand::Put(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let ttl_ms = args
                .ttl
                .as_deref()
                .map(crate::units::parse_duration)
                .transpose()
                .map_err(|e| Failure::new(exit::USAGE, format!("--ttl: {e}")))?
                .map(|d| d.as_millis() as u64);
            let mut put = api::KvPut {
                value: args.value,
                base64: None,
                ttl_ms,
            };
            if let Some(file) = &args.file {
                let bytes = tokio::fs::read(file)
                    .await
                    .map_err(|e| local(&format!("cannot read {}", file.display()), e))?;
                match String::from_utf8(bytes) {
                    Ok(text) => put.value = Some(text),
                    Err(bytes) => put.base64 = Some(BASE64.encode(bytes.as_bytes())),
                }
            }
            let path = format!("{}/keys/{}", base(&args.bucket), key_path(&args.key));
            let written: api::KvWritten = client
                .call(
                    "put",
                    Method::PUT,
                    &path,
                    Some(Payload::json(&put)),
                    args.admin.json,
                )
                .await?;
            if !args.admin.json {
                print(format!("{} is at version {}\n", written.key, written.revision).as_bytes());
            }
            Ok(())
        }
        KvCommand::Delete(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let path = format!("{}/keys/{}", base(&args.bucket), key_path(&args.key));
            let deleted: api::KvDeleted = client
                .call("delete", Method::DELETE, &path, None, args.admin.json)
                .await?;
            if !args.admin.json {
                let text = if deleted.deleted {
                    format!("deleted {}\n", deleted.key)
                } else {
                    format!("{} did not exist\n", deleted.key)
                };
                print(text.as_bytes());
            }
            Ok(())
        }
        KvCommand::Export(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let path = format!("{}/export", base(&args.bucket));
            let reply = client.send(Method::GET, &path, None).await?;
            if !reply.status.is_success() {
                if args.admin.json {
                    print(&reply.body);
                }
                return Err(reply.refused("export"));
            }
            print(&reply.body);
            Ok(())
        }
        KvCommand::Import(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let bytes = if args.file.as_os_str() == "-" {
                use tokio::io::AsyncReadExt as _;
                let mut bytes = Vec::new();
                tokio::io::stdin()
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| local("cannot read stdin", e))?;
                bytes
            } else {
                tokio::fs::read(&args.file)
                    .await
                    .map_err(|e| local(&format!("cannot read {}", args.file.display()), e))?
            };
            let payload = Payload {
                bytes: Bytes::from(bytes),
                content_type: "application/x-ndjson",
                signature: None,
            };
            let path = format!("{}/import", base(&args.bucket));
            let imported: api::KvImported = client
                .call(
                    "import",
                    Method::POST,
                    &path,
                    Some(payload),
                    args.admin.json,
                )
                .await?;
            if !args.admin.json {
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
