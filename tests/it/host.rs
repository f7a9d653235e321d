//! What a version's requests share, built once with the version: its `/data` directory is
//! opened then, not per request. Changes to the files show at once; a directory replaced as a
//! whole shows from the route's next activation. (What a config and a directory cost per
//! request is measured in `just bench`, `bench/delivery.rs`.)

use handoff::config::Config;
use handoff_tests::{TestServer, guests};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_opens_its_directory_once() {
    let root = tempfile::tempdir().unwrap();
    let site = root.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "one").unwrap();
    let server = TestServer::start_with(Config {
        guest_dirs: Some(root.path().to_path_buf()),
        ..Config::ephemeral()
    })
    .await;
    let hostile = guests::bytes(guests::HOSTILE);
    let (code, body) = server
        .deploy_bytes("files", "?dir=site", hostile.clone())
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let read = || async { server.get("/files/data").await.1 };
    assert_eq!(read().await, "one; write denied; escape denied");

    // A file changed in place: the next request reads the new contents.
    std::fs::write(site.join("hello.txt"), "two").unwrap();
    assert_eq!(read().await, "two; write denied; escape denied");

    // The directory replaced as a whole: this version keeps the one it opened...
    std::fs::rename(&site, root.path().join("site-old")).unwrap();
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "three").unwrap();
    assert_eq!(read().await, "two; write denied; escape denied");

    // ... and the next version of the route (here: new config) opens the new one.
    let (code, body) = server
        .deploy_bytes("files", "?config=NEXT=1", hostile)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(read().await, "three; write denied; escape denied");
    server.shutdown().await;
}
