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

/// `handoff kv ...`.
pub async fn run(args: KvArgs) -> Result<(), Failure> {
    match args.command {
        KvCommand::Keys(args) => {
            let client = AdminClient::new(&args.admin.admin)?;
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("{}/keys", base(&args.bucket));
                if let Some(cursor) = &cursor {
                    path = format!("{path}?cursor={}", encode(cursor));
                }
                let page: api::KvKeys = client
                    .call(
                        "listing the keys",
                        Method::GET,
                        &path,
                        None,
                        args.admin.json,
                    )
                    .await?;
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
