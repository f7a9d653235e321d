//! An `async` (WASI 0.3) guest written with the SDK:
//!
//! * `GET /<route>` and `GET /<route>/hello` — `sdk-async hello`
//! * `POST /<route>/echo` — how many bytes of the request body it read, awaited chunk by chunk
//! * `GET /<route>/config` — the deploy-time config `GREETING`
//! * `POST /<route>/count/:key` — increments `key` in the route's bucket and answers the count
//! * `GET /<route>/stream?chunks=N&delay_ms=M` — N lines, M ms apart, each sent as computed
//! * `GET /<route>/log` — writes an info line to the route's log
//!
//! Every answer carries the header `x-guest: sdk-async`.

use std::time::Duration;

use handoff_sdk::{
    Body, Request, RequestExt, Response, Result, Router, config, kv, log, response, time,
};

async fn handle(req: Request) -> Result<Response> {
    let mut response = Router::new()
        .get("/", |_| Ok(response::text("sdk-async hello\n")))
        .get("/hello", |_| Ok(response::text("sdk-async hello\n")))
        .post_async("/echo", echo)
        .get("/config", |_| {
            Ok(response::text(format!(
                "greeting {}\n",
                config::get_or("GREETING", "unset")
            )))
        })
        .post("/count/:key", |req| {
            let count = kv::Bucket::route()?.increment(req.param("key").unwrap_or_default(), 1)?;
            Ok(response::text(format!("count {count}\n")))
        })
        .get("/stream", stream)
        .get("/log", |req| {
            log::info!("sdk-async logs {}", req.uri().path());
            Ok(response::text("logged\n"))
        })
        .serve(req)
        .await?;
    response.headers_mut().insert(
        "x-guest",
        handoff_sdk::HeaderValue::from_static("sdk-async"),
    );
    Ok(response)
}

async fn echo(req: Request) -> Result<Response> {
    let read = req.into_body().read_bytes().await?.len();
    Ok(response::text(format!("read {read}\n")))
}

fn stream(req: Request) -> Result<Response> {
    let query = req.query();
    let chunks: u32 = query.get_or("chunks", 3)?;
    let delay = Duration::from_millis(query.get_or("delay_ms", 10)?);
    Ok(response::text(Body::stream_async(
        move |mut out| async move {
            for i in 1..=chunks {
                if i > 1 {
                    time::sleep(delay).await;
                }
                out.send(format!("chunk {i}/{chunks}\n")).await?;
            }
            Ok(())
        },
    )))
}

handoff_sdk::export!(async handle);
