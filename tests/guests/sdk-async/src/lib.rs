//! An `async` (WASI 0.3) guest written with the SDK:
//!
//! * `GET /<route>` and `GET /<route>/hello` — `sdk-async hello`
//! * `POST /<route>/echo` — how many bytes of the request body it read, awaited chunk by chunk
//! * `GET /<route>/config` — the deploy-time config `GREETING`
//! * `POST /<route>/count/:key` — increments `key` in the route's bucket and answers the count
//! * `GET /<route>/stream?chunks=N&delay_ms=M` — N lines, M ms apart, each sent as computed
//! * `GET /<route>/log` — writes an info line to the route's log
//! * `GET /<route>/fetch?url=U` — `GET U` with the SDK's client: the upstream's status and
//!   body, streamed through as it arrives; a failed call answers its error's status with the
//!   error's message (e.g. the allow-list's refusal)
//! * `GET /<route>/slowlog?tag=T&delay_ms=M` — logs `T before`, waits M ms, logs `T after`
//!
//! Every answer carries the header `x-guest: sdk-async`.

use std::time::Duration;

use handoff_sdk::{
    Body, Request, RequestExt, Response, Result, Router, client, config, kv, log, response, time,
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
        .get_async("/fetch", fetch)
        .get_async("/slowlog", slowlog)
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

async fn fetch(req: Request) -> Result<Response> {
    let url = req.query().get("url").unwrap_or_default().to_owned();
    log::info!("sdk-async fetches {url}");
    match client::get(&url).await {
        // The upstream's body goes on to the client unread, chunk by chunk as it arrives.
        Ok(upstream) => Ok(upstream),
        Err(error) => {
            let mut answer = response::text(format!("{error:#}\n"));
            *answer.status_mut() = error.status();
            Ok(answer)
        }
    }
}

async fn slowlog(req: Request) -> Result<Response> {
    let query = req.query();
    let tag = query.get("tag").unwrap_or("untagged").to_owned();
    let delay = Duration::from_millis(query.get_or("delay_ms", 100)?);
    log::info!("{tag} before");
    time::sleep(delay).await;
    log::info!("{tag} after");
    Ok(response::text(format!("{tag} logged\n")))
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
