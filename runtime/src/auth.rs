//! Who may use the admin API: bearer tokens, each with a name and a scope.
//!
//! * `read` may call the `GET` endpoints, and sees config values as `(redacted)` (they are
//!   often secrets); `deploy` may also deploy, roll back, activate, upload and delete, and sees
//!   the values. The handlers learn the scope from the [`Caller`] extension.
//! * Tokens come from a tokens file (`--tokens-file`, TOML) and from the `HANDOFF_ADMIN_TOKEN`
//!   environment variable (one `deploy` token named `env`); never from a command-line argument,
//!   where other users of the machine could read it.
//! * With no token configured the API is open (as `anonymous`), and the server refuses to bind
//!   it to anything but loopback.
//! * Tokens are compared in constant time, on their sha256 digests, against every configured
//!   token; no response ever echoes a token.
//!
//! `GET /healthz` stays open, so load balancers need no secret.

use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::problem::Problem;

/// The environment variable holding a full-scope admin token (named `env`).
pub const TOKEN_ENV: &str = "HANDOFF_ADMIN_TOKEN";
/// Who acts when no token is configured.
pub const ANONYMOUS: &str = "anonymous";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Status, routes, versions.
    Read,
    /// Everything `read` may, and deploy, roll back, activate, upload, delete.
    Deploy,
}

/// One admin token.
#[derive(Clone)]
pub struct Token {
    /// Its name: recorded in the history and the audit log.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token `name` with `scope` and secret `secret`.
    pub fn new(name: &str, scope: Scope, secret: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "token name `{}` must be 1 to 64 visible ASCII characters",
                name.escape_debug()
            ));
        }
        if secret.len() < 16 {
            return Err(format!(
                "the secret of token `{name}` is shorter than 16 characters; use a long random one (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            scope,
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }
}

/// The tokens file: `[[token]]` tables with `name`, `token` and `scope`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// One `[[token]]` table, in a tokens file or in the `--config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    name: String,
    token: String,
    scope: Scope,
}

/// Reads a tokens file, saying what is wrong with it in a sentence.
pub fn load_tokens_file(path: &Path) -> Result<Vec<Token>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| {
        format!(
            "the tokens file {} is invalid: {}",
            path.display(),
            e.message().trim_end()
        )
    })?;
    tokens_from(file.token, &format!("the tokens file {}", path.display()))
}

/// Checks `[[token]]` entries read from `source` (named in errors): valid secrets, unique names.
pub fn tokens_from(entries: Vec<TokenEntry>, source: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    for entry in entries {
        if tokens.iter().any(|t: &Token| t.name == entry.name) {
            return Err(format!("{source} names token `{}` twice", entry.name));
        }
        tokens.push(
            Token::new(&entry.name, entry.scope, &entry.token)
                .map_err(|e| format!("in {source}: {e}"))?,
        );
    }
    Ok(tokens)
}

/// Every admin token a server trusts: those of the tokens file at `file`, those of the
/// config file (`inline`), and a `deploy` token named `env` when `$HANDOFF_ADMIN_TOKEN` is set.
/// Names are unique across all three; the error is a sentence naming the clash.
pub fn admin_tokens(file: Option<&Path>, inline: Vec<Token>) -> Result<Vec<Token>, String> {
    let mut tokens = match file {
        Some(path) => load_tokens_file(path)?,
        None => Vec::new(),
    };
    for token in inline {
        if tokens.iter().any(|t| t.name == token.name) {
            return Err(format!(
                "token `{}` is in both the config file and the tokens file; give each token one name",
                token.name
            ));
        }
        tokens.push(token);
    }
    if let Ok(secret) = std::env::var(TOKEN_ENV)
        && !secret.is_empty()
    {
        if tokens.iter().any(|t| t.name == "env") {
            return Err("the tokens file already has a token named `env`, the name \
                        $HANDOFF_ADMIN_TOKEN's token takes"
                .into());
        }
        tokens.push(
            Token::new("env", Scope::Deploy, &secret).map_err(|e| format!("${TOKEN_ENV}: {e}"))?,
        );
    }
    Ok(tokens)
}

/// The caller of an admin request, as the handlers see it (a request extension): its name
/// (the token's, or [`ANONYMOUS`]) and what it may do. A server without tokens gives every
/// caller the `deploy` scope.
#[derive(Debug, Clone)]
pub struct Caller(pub String, pub Scope);

/// What a `read` caller sees instead of a config value.
pub const REDACTED: &str = "(redacted)";

impl Caller {
    /// A config value as this caller may see it: itself for `deploy`, [`REDACTED`] for `read`
    /// (config values are often secrets; the keys stay visible).
    pub fn config_value(&self, value: &str) -> String {
        match self.1 {
            Scope::Deploy => value.to_owned(),
            Scope::Read => REDACTED.to_owned(),
        }
    }
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token whose secret is `presented`, checking every token whatever matches.
fn find<'a>(tokens: &'a [Token], presented: &str) -> Option<&'a Token> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in tokens {
        if constant_time_eq(&token.digest, &digest) {
            found = Some(token);
        }
    }
    found
}

fn unauthorized(detail: &str) -> Response {
    let mut response = Problem::new(StatusCode::UNAUTHORIZED, detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"handoff admin\""),
    );
    response
}

/// Admin middleware: authenticates, authorizes by scope, names the caller, and writes one
/// audit line per mutation (who, what, route, result).
pub async fn guard(
    State(tokens): State<std::sync::Arc<Vec<Token>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let caller = if tokens.is_empty() {
        Caller(ANONYMOUS.to_owned(), Scope::Deploy)
    } else if path == "/healthz" {
        Caller(ANONYMOUS.to_owned(), Scope::Read)
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let refused = |why: &str| {
            if !matches!(method, Method::GET | Method::HEAD) {
                tracing::warn!(target: "audit", who = %UNAUTHENTICATED, method = %method, path = %path, result = 401, "refused: {why}");
            }
        };
        let Some(presented) = presented else {
            refused("no token");
            return unauthorized(
                "the admin API needs `Authorization: Bearer <token>`; the CLI sends $HANDOFF_ADMIN_TOKEN",
            );
        };
        let Some(token) = find(&tokens, presented) else {
            refused("invalid token");
            return unauthorized("the admin token is not valid");
        };
        let needs = if matches!(method, Method::GET | Method::HEAD) {
            Scope::Read
        } else {
            Scope::Deploy
        };
        if needs == Scope::Deploy && token.scope == Scope::Read {
            tracing::warn!(target: "audit", who = %token.name, method = %method, path = %path, result = 403, "refused: read-only token");
            return Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token `{}` has the `read` scope; this needs a `deploy` token",
                    token.name
                ),
            )
            .into_response();
        }
        Caller(token.name.clone(), token.scope)
    };
    request.extensions_mut().insert(caller.clone());
    // What the request changes is published on the event bus as made by the caller.
    let response = crate::events::ACTOR
        .scope(caller.0.clone(), next.run(request))
        .await;
    if !matches!(method, Method::GET | Method::HEAD) {
        let route = path
            .strip_prefix("/v1/routes/")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        tracing::info!(
            target: "audit",
            who = %caller.0,
            method = %method,
            path = %path,
            route = %route.unwrap_or(""),
            version = %response
                .extensions()
                .get::<AuditVersion>()
                .map_or("", |v| v.0.as_str()),
            result = response.status().as_u16(),
            "admin mutation"
        );
    }
    response
}

/// Who the audit log names for a request without a valid token.
const UNAUTHENTICATED: &str = "unauthenticated";

/// The version a mutation left active, for the audit line (a response extension).
#[derive(Debug, Clone)]
pub struct AuditVersion(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_secret_and_never_printed() {
        let tokens = vec![
            Token::new("ci", Scope::Deploy, "0123456789abcdef-ci").unwrap(),
            Token::new("dash", Scope::Read, "0123456789abcdef-dash").unwrap(),
        ];
        assert_eq!(find(&tokens, "0123456789abcdef-ci").unwrap().name, "ci");
        assert_eq!(
            find(&tokens, "0123456789abcdef-dash").unwrap().scope,
            Scope::Read
        );
        assert!(find(&tokens, "0123456789abcdef-c").is_none());
        assert!(find(&tokens, "").is_none());
        assert!(!format!("{tokens:?}").contains("0123456789"));
    }

    #[test]
    fn weak_or_nameless_tokens_are_refused() {
        assert!(
            Token::new("ci", Scope::Deploy, "short")
                .unwrap_err()
                .contains("16")
        );
        assert!(Token::new("", Scope::Deploy, "0123456789abcdef").is_err());
        assert!(Token::new("a b", Scope::Deploy, "0123456789abcdef").is_err());
    }

    #[test]
    fn a_tokens_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(
            &path,
            "[[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef0123\"\nscope = \"deploy\"\n\
             [[token]]\nname = \"grafana\"\ntoken = \"fedcba9876543210fedc\"\nscope = \"read\"\n",
        )
        .unwrap();
        let tokens = load_tokens_file(&path).unwrap();
        assert_eq!(tokens.len(), 2);
        std::fs::write(
            &path,
            "[[token]]\nname = \"x\"\ntoken = \"0123456789abcdef\"\nscope = \"admin\"\n",
        )
        .unwrap();
        assert!(load_tokens_file(&path).unwrap_err().contains("invalid"));
    }
}
