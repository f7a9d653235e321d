//! Versions that last, through the binary: `versions`, `rollback`, `upload` and `activate`;
//! a restart that serves what was deployed; and `kill -9` in the middle of many deploys. (Who
//! may change what: `access`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use handoff::api::{Deployed, History, RouteList, RouteStatus, Uploaded};
use handoff::exit;
use handoff_tests::{guests, typed};
use http::{Method, Request};
use http_body_util::Full;

use crate::support::{get, handoff, json, serve, serve_in};

const FAILED: i32 = exit::FAILED as i32;
const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rollback_upload_and_activate_from_the_cli() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();

    let v1: Deployed = typed(&json(
        handoff(&[
            "deploy",
            "app",
            guests::TAGGED_V1,
            "--label",
            "stable",
            "--message",
            "first cut",
            "--json",
            "--admin",
            admin,
        ])
        .await
        .ok(),
    ));
    handoff(&["deploy", "app", guests::TAGGED_V2, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));

    let table = handoff(&["versions", "app", "--admin", admin]).await;
    let table = table.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("LABEL"),
        "{table}"
    );
    assert!(
        lines[1].contains("stable") && lines[1].contains("first cut"),
        "{table}"
    );
    assert!(
        lines[2].starts_with('*'),
        "the active version is marked: {table}"
    );

    // Back to the previous version; then forward by a short digest; then by label.
    handoff(&["rollback", "app", "--admin", admin]).await.ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    let history = json(
        handoff(&["versions", "app", "--json", "--admin", admin])
            .await
            .ok(),
    );
    let v2_digest = typed::<History>(&history).versions[1].version.clone();
    let v2_short = &v2_digest["sha256:".len().."sha256:".len() + 8];
    handoff(&["rollback", "app", v2_short, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v2");
    handoff(&["rollback", "app", "--label", "stable", "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    let status = json(
        handoff(&["status", "app", "--json", "--admin", admin])
            .await
            .ok(),
    );
    assert_eq!(typed::<RouteStatus>(&status).active.version, v1.version);

    // Failures: one line each, the server's reason, exit 1.
    handoff(&["rollback", "app", "--label", "nope", "--admin", admin])
        .await
        .fails(FAILED, "no version labelled `nope`");
    handoff(&["rollback", "app", "ffffffff", "--admin", admin])
        .await
        .fails(FAILED, "no version starting with `ffffffff`");
    handoff(&["rollback", "missing", "--admin", admin])
        .await
        .fails(FAILED, "no route named `missing`");
    assert_eq!(get(&ready, "/app").await.1, "v1");

    // Upload first, switch later.
    let uploaded = handoff(&["upload", guests::HOSTILE, "--json", "--admin", admin]).await;
    let uploaded: Uploaded = typed(&json(uploaded.ok()));
    assert_eq!(
        get(&ready, "/app").await.1,
        "v1",
        "an upload activates nothing"
    );
    let version = uploaded.version.as_str();
    let text = handoff(&[
        "activate", "fresh", version, "--prefix", "/new", "--admin", admin,
    ])
    .await;
    assert!(text.ok().starts_with("created route fresh"), "{text:#?}");
    assert_eq!(get(&ready, "/new/x").await, (200, "ok".into()));
    handoff(&["activate", "app", version, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "ok");

    // The command `handoff upload` prints works as printed: its short version is found among
    // the stored modules, for a new route and for one whose history does not hold it.
    let uploaded = handoff(&["upload", guests::TAGGED_V2, "--admin", admin]).await;
    let text = uploaded.ok();
    let short = text
        .split("handoff activate ROUTE ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no activate command in {text:?}"))
        .to_owned();
    assert_eq!(short.len(), 12, "{text:?}");
    handoff(&[
        "activate", "short", &short, "--prefix", "/short", "--admin", admin,
    ])
    .await
    .ok();
    assert_eq!(get(&ready, "/short").await.1, "v2");
    handoff(&["activate", "app", &short, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_what_was_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve_in(dir.path()).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "one", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    handoff(&[
        "deploy",
        "two",
        guests::TAGGED_V2,
        "--prefix",
        "/",
        "--admin",
        &admin,
    ])
    .await
    .ok();
    assert!(server.terminate(READY).await.success());

    let (_server, ready) = serve_in(dir.path()).await;
    assert_eq!(get(&ready, "/one").await, (200, "v1".into()));
    assert_eq!(get(&ready, "/anything").await, (200, "v2".into()));
    let admin = ready.admin_url();
    let routes = json(handoff(&["routes", "--json", "--admin", &admin]).await.ok());
    assert_eq!(typed::<RouteList>(&routes).routes.len(), 2, "{routes}");
}

/// Deploys attempted on one route, in order: (tag, acknowledged).
type Attempts = Arc<Mutex<Vec<Vec<(&'static str, bool)>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_leaves_each_route_on_its_old_or_new_version() {
    const ROUTES: [&str; 3] = ["a", "b", "c"];
    let dir = tempfile::tempdir().unwrap();
    let v1 = Bytes::from(std::fs::read(guests::TAGGED_V1).unwrap());
    let v2 = Bytes::from(std::fs::read(guests::TAGGED_V2).unwrap());
    let mut total_acked = 0;
    // Whether each route is known to exist (a deploy was acknowledged, or it served).
    let mut exists = [false; ROUTES.len()];
    for round in 0..5u64 {
        let (server, ready) = serve_in(dir.path()).await;
        let attempts: Attempts = Arc::new(Mutex::new(vec![Vec::new(); ROUTES.len()]));
        // How many deploys this round the server acknowledged.
        let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
        // Deploy as fast as the server takes them, round-robin over the routes, alternating
        // versions, until the server dies.
        let deployer = {
            let attempts = attempts.clone();
            let (v1, v2) = (v1.clone(), v2.clone());
            tokio::spawn(async move {
                for i in 0usize.. {
                    let route = i % ROUTES.len();
                    let (tag, bytes) = if (i / ROUTES.len()).is_multiple_of(2) {
                        ("v2", v2.clone())
                    } else {
                        ("v1", v1.clone())
                    };
                    let at = {
                        let mut attempts = attempts.lock().unwrap();
                        attempts[route].push((tag, false));
                        attempts[route].len() - 1
                    };
                    let request = Request::builder()
                        .method(Method::PUT)
                        .uri(format!("/v1/routes/{}", ROUTES[route]))
                        .header("host", ready.admin.to_string())
                        .header("content-type", "application/wasm")
                        .body(Full::new(bytes))
                        .unwrap();
                    let endpoint = handoff::http_client::Endpoint::of(ready.admin, false);
                    let Ok(mut connection) = handoff::http_client::Connection::open(
                        &endpoint,
                        None,
                        Duration::from_secs(5),
                    )
                    .await
                    else {
                        return;
                    };
                    match connection.send(request).await {
                        Ok(response) if response.status().is_success() => {
                            attempts.lock().unwrap()[route][at].1 = true;
                            acked_tx.send_modify(|acked| *acked += 1);
                        }
                        Ok(response) => panic!("a deploy was refused: {}", response.status()),
                        Err(_) => return, // the server died mid-deploy
                    }
                }
            })
        };
        // Let a few deploys through (more each round), then kill a moment later: the next
        // deploy is on its way by then, at a different stage each round.
        let enough = round as usize + 2;
        tokio::time::timeout(READY, acked_rx.wait_for(|acked| *acked >= enough))
            .await
            .unwrap_or_else(|_| panic!("round {round}: {enough} deploys acknowledged in time"))
            .expect("the deployer runs until the server dies");
        tokio::time::sleep(Duration::from_millis(4 * round)).await;
        server.kill9().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), deployer).await;

        let (server, ready) = serve_in(dir.path()).await;
        let attempts = attempts.lock().unwrap().clone();
        for (index, (route, tried)) in ROUTES.iter().zip(&attempts).enumerate() {
            let (status, body) = get(&ready, &format!("/{route}")).await;
            let acked = tried.iter().rposition(|(_, ok)| *ok);
            total_acked += tried.iter().filter(|(_, ok)| *ok).count();
            // The last acknowledged deploy, or one attempted after it (it may have committed
            // before the kill), or — with nothing acknowledged this round — what an earlier
            // round left.
            let mut allowed: Vec<&str> = match acked {
                Some(i) => tried[i..].iter().map(|(tag, _)| *tag).collect(),
                None => tried.iter().map(|(tag, _)| *tag).collect(),
            };
            if acked.is_none() && round > 0 {
                allowed.extend(["v1", "v2"]);
            }
            if acked.is_some() {
                exists[index] = true;
            }
            if !exists[index] {
                // No deploy to it was ever acknowledged: the route may not exist yet.
                assert!(
                    status == 404 || allowed.contains(&body.as_str()),
                    "round {round}, route {route}: {status} {body:?}, tried {tried:?}"
                );
                exists[index] = status == 200;
                continue;
            }
            assert_eq!(
                status, 200,
                "round {round}, route {route}: {body:?}, tried {tried:?}"
            );
            assert!(
                allowed.contains(&body.as_str()),
                "round {round}, route {route} serves {body:?}; allowed {allowed:?} (tried {tried:?})"
            );
        }
        let admin = ready.admin_url();
        let routes = json(handoff(&["routes", "--json", "--admin", &admin]).await.ok());
        assert!(
            typed::<RouteList>(&routes).unavailable.is_empty(),
            "{routes}"
        );
        assert!(server.terminate(READY).await.success());
    }
    assert!(
        total_acked >= 10,
        "too few deploys got through to mean anything: {total_acked}"
    );
    eprintln!("kill -9 test: 5 kills, {total_acked} acknowledged deploys, every route consistent");
}
