//! The smallest handoff guest: answers every request with a greeting that echoes the method
//! and path it was asked for.

use handoff_sdk::{Request, Response, Result, response};

fn handle(req: Request) -> Result<Response> {
    Ok(response::text(format!(
        "Hello from handoff! You asked for {} {}\n",
        req.method(),
        req.uri().path()
    )))
}

handoff_sdk::export!(handle);
