//! Every compiled guest deploys and answers (so no fixture rots unused).

use handoff_tests::{TestServer, guests};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guest_deploys_and_answers() {
    let server = TestServer::start().await;
    // The WASI 0.3 guests wait for the host side of issue 20; `wasmtime serve` runs them
    // meanwhile (`compat.rs`).
    let p3 = [
        guests::SPIN_HELLO,
        guests::WASIP3_HELLO,
        guests::SDK_ASYNC,
        guests::LOOKUPS,
    ];
    for (i, guest) in guests::ALL.iter().enumerate() {
        if p3.contains(guest) {
            continue;
        }
        let route = format!("guest-{i}");
        server.deploy(&route, guest).await;
        let (status, body) = server.get(&format!("/{route}")).await;
        assert_eq!(status, StatusCode::OK, "{guest}: {body}");
    }
    server.shutdown().await;
}
