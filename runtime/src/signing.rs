//! Signed uploads: Ed25519 signatures over a component's bytes, checked against the public
//! keys the server trusts.
//!
//! A client sends the signature, base64, in the `Handoff-Signature` header of
//! `PUT /v1/routes/{name}` or `POST /v1/modules`. With `--signatures require` an unsigned or
//! badly signed upload is refused (403) and nothing changes; with `warn` it is deployed and
//! logged; `off` ignores signatures. `handoff keygen` makes a key pair and `handoff deploy
//! --sign KEY` signs.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Deserialize;

/// The request header carrying an upload's signature.
pub const HEADER: &str = "handoff-signature";

/// What the server does with upload signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Signatures are not checked.
    #[default]
    Off,
    /// Unsigned or badly signed uploads are deployed, with a warning in the log.
    Warn,
    /// Unsigned or badly signed uploads are refused.
    Require,
}

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its name, for logs.
    pub name: String,
    /// The 32-byte Ed25519 public key.
    pub public: [u8; 32],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// One `[[key]]` table, in a signing keys file or in the `--config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    name: String,
    public: String,
}

/// Every key a server trusts: those of the keys file at `file` and those of the config file
/// (`inline`).
pub fn trusted_keys(
    file: Option<&Path>,
    inline: Vec<TrustedKey>,
) -> Result<Vec<TrustedKey>, String> {
    let mut keys = match file {
        Some(path) => load_keys(path)?,
        None => Vec::new(),
    };
    keys.extend(inline);
    Ok(keys)
}

/// Reads a TOML file of `[[key]]` tables with `name` and `public` (base64), in a sentence
/// when it is unusable.
pub fn load_keys(path: &Path) -> Result<Vec<TrustedKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the signing keys file {}: {e}", path.display()))?;
    let file: KeysFile = toml::from_str(&text).map_err(|e| {
        format!(
            "the signing keys file {} is invalid: {}",
            path.display(),
            e.message().trim_end()
        )
    })?;
    keys_from(file.key, &path.display().to_string())
}

impl TrustedKey {
    /// The key `name` whose public half is `public` (base64, as `handoff keygen` prints it).
    pub fn new(name: &str, public: &str) -> Result<Self, String> {
        let public = BASE64
            .decode(public.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| format!("key `{name}` is not a base64 Ed25519 public key (32 bytes)"))?;
        Ok(Self {
            name: name.to_owned(),
            public,
        })
    }
}

/// Decodes `[[key]]` entries read from `source` (named in errors).
pub fn keys_from(entries: Vec<KeyEntry>, source: &str) -> Result<Vec<TrustedKey>, String> {
    entries
        .into_iter()
        .map(|entry| {
            TrustedKey::new(&entry.name, &entry.public).map_err(|_| {
                format!(
                    "key `{}` in {source} is not a base64 Ed25519 public key (32 bytes)",
                    entry.name,
                )
            })
        })
        .collect()
}

/// Which trusted key signed `bytes` with `signature` (base64), if any.
pub fn signer<'a>(keys: &'a [TrustedKey], bytes: &[u8], signature: &str) -> Option<&'a TrustedKey> {
    let signature = BASE64.decode(signature.trim()).ok()?;
    keys.iter().find(|key| {
        UnparsedPublicKey::new(&ED25519, &key.public)
            .verify(bytes, &signature)
            .is_ok()
    })
}

/// A new key pair: (private key as base64 PKCS#8, public key as base64).
pub fn generate() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no randomness".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    Ok((
        BASE64.encode(pkcs8.as_ref()),
        BASE64.encode(pair.public_key().as_ref()),
    ))
}

/// Signs `bytes` with a private key (base64 PKCS#8, as [`generate`] writes it).
pub fn sign(private: &str, bytes: &[u8]) -> Result<String, String> {
    let pkcs8 = BASE64
        .decode(private.trim())
        .map_err(|_| "the private key is not base64".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| format!("the private key is not an Ed25519 PKCS#8 key: {e}"))?;
    Ok(BASE64.encode(pair.sign(bytes).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_signed_bytes_and_a_trusted_key() {
        let (private, public) = generate().unwrap();
        let public: [u8; 32] = BASE64.decode(public).unwrap().try_into().unwrap();
        let keys = vec![TrustedKey {
            name: "ci".into(),
            public,
        }];
        let signature = sign(&private, b"component").unwrap();
        assert_eq!(signer(&keys, b"component", &signature).unwrap().name, "ci");
        assert!(signer(&keys, b"c0mponent", &signature).is_none());
        assert!(signer(&keys, b"component", "not base64!").is_none());
        let (other, _) = generate().unwrap();
        let forged = sign(&other, b"component").unwrap();
        assert!(signer(&keys, b"component", &forged).is_none());
    }
}
