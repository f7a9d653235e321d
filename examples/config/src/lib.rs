//! Reads its route's deploy-time configuration: `GREETING` (default `Hello`) greets whoever
//! `?name=` names (default `world`).
//!
//! * `GET /<route>`          — `Hello, world!`, or `{GREETING}, world!` when configured
//! * `GET /<route>?name=Ada` — `Hello, Ada!`
//! * `GET /<route>/config`   — the config keys this guest reads and their current values

use handoff_sdk::{Request, RequestExt, Response, Result, Router, config, response};

/// The greeting used when the route was deployed without `config=GREETING=...`.
const DEFAULT_GREETING: &str = "Hello";
/// Every config key this guest reads (it never lists the whole environment).
const KEYS: &[&str] = &["GREETING"];

fn handle(req: Request) -> Result<Response> {
    Router::new()
        .get("/", greet)
        .get("/config", show_config)
        .handle(req)
}

fn greet(req: Request) -> Result<Response> {
    let greeting = config::get_or("GREETING", DEFAULT_GREETING);
    let query = req.query();
    let name = query.get("name").unwrap_or("world");
    Ok(response::text(format!("{greeting}, {name}!\n")))
}

fn show_config(_req: Request) -> Result<Response> {
    let mut text = String::new();
    for key in KEYS {
        match config::get(key) {
            Some(value) => text.push_str(&format!("{key}={value}\n")),
            None => text.push_str(&format!("{key} is not set\n")),
        }
    }
    Ok(response::text(text))
}

handoff_sdk::export!(handle);
