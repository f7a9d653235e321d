//! Who may write the data directory: artifacts in it are loaded as native code, so the server
//! creates it for its own user only (directories 0700, files 0600), makes an existing database
//! unreadable to others, and refuses a directory other users could write.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use handoff::config::Config;
use handoff::server::Server;
use handoff::state::private::UntrustedDataDir;
use handoff_tests::{TestServer, guests};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn config(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_everything_in_it_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let server = TestServer::start_with(config(&dir)).await;
    server.deploy("app", guests::TAGGED_V1).await;
    server.shutdown().await;

    let mut files = 0;
    let mut pending = vec![dir.clone()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    assert!(
        files >= 3,
        "the database, a module and an artifact: {files}"
    );

    // A database left readable by others (an older server's umask) is made private at start.
    let db = dir.join("handoff.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TestServer::start_with(config(&dir)).await;
    assert_eq!(server.get("/app").await.1, "v1");
    assert_eq!(mode(&db), 0o600);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_others_can_write_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let server = TestServer::start_with(config(&dir)).await;
    server.deploy("app", guests::TAGGED_V1).await;
    server.shutdown().await;
    let db = dir.join("handoff.redb");
    for (path, loose, who) in [
        (dir.clone(), 0o777, "every user"),
        (dir.join("artifacts"), 0o770, "its group"),
        (db.clone(), 0o666, "every user"),
    ] {
        let before = mode(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        let error = Server::start(config(&dir))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} mode {loose:o} was accepted", path.display()));
        let untrusted = error
            .downcast_ref::<UntrustedDataDir>()
            .unwrap_or_else(|| panic!("not an UntrustedDataDir: {error:#}"));
        assert_eq!(untrusted.path, path);
        let text = error.to_string();
        assert!(text.contains(&format!("writable by {who}")), "{text}");
        assert!(
            text.contains(&format!("chmod go-w {}", path.display())),
            "{text}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
    }
    // Fixed, it serves what it kept.
    let server = TestServer::start_with(config(&dir)).await;
    assert_eq!(server.get("/app").await.1, "v1");
    server.shutdown().await;
}
