//! A guest that breaks on purpose, for rollback demos: healthy on its route's root, broken
//! below it.
//!
//! * `GET /<route>`        — 200 `failing: healthy`
//! * `GET /<route>/error`  — the handler returns an `Err`: a 500 whose body says nothing
//!   internal, and an `ERROR` line on stderr that the host logs
//! * `GET /<route>/trap`   — the handler panics: the guest traps, and the host answers 500

use handoff_sdk::{Error, Request, Response, Result, Router, response};

fn handle(req: Request) -> Result<Response> {
    Router::new()
        .get("/", |_| Ok(response::text("failing: healthy\n")))
        .get("/error", |_| {
            Err(Error::msg(
                "the database is unreachable (not really: this guest fails on purpose)",
            ))
        })
        .get("/trap", |_| panic!("failing guest: trapping on purpose"))
        .handle(req)
}

handoff_sdk::export!(handle);
