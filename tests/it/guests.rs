//! Every compiled guest deploys and answers (so no fixture rots unused).

use handoff_tests::{TestServer, guests};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guest_deploys_and_answers() {
    let server = TestServer::start().await;
    for (i, guest) in guests::ALL.iter().enumerate() {
        let route = format!("guest-{i}");
        server.deploy(&route, guest).await;
        let (status, body) = server.get(&format!("/{route}")).await;
        assert_eq!(status, StatusCode::OK, "{guest}: {body}");
    }
    server.shutdown().await;
}
