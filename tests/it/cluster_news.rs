//! What the other nodes of a cluster make of a node that restarts with many routes (issue 21,
//! item 9), on a real nats-server: a node that restores hundreds of routes and reports them all
//! at once is no news to event streams (no `node_converged` for what it merely restored), so a
//! client following the events stays connected and the resume buffer keeps what it held.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use handoff::api::{Event, EventKind};
use handoff::client::AdminClient;
use handoff::client::events::EventStream;
use handoff_tests::nats::{NatsServer, until_live};
use handoff_tests::{TestServer, eventually, guests};
use http::{Method, StatusCode};

const GENEROUS: Duration = Duration::from_secs(60);

/// More routes than an event stream's queue holds (`events::bus::QUEUE`, 256): one event
/// for each at once would drop every client.
const ROUTES: usize = 300;

/// Waits until `node` reads `other`'s record alive with at least `routes` routes in it.
async fn sees_routes(node: &TestServer, other: &str, routes: usize) {
    eventually(
        &format!("{other}'s record with {routes} routes"),
        GENEROUS,
        || async {
            let (_, list) = node.admin(Method::GET, "/v1/nodes").await;
            let record = list["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node"] == other)?
                .clone();
            let served = record["routes"].as_array()?.len();
            (record["alive"] == true && served >= routes).then_some(())
        },
    )
    .await;
}

/// Reads `stream` until the `node_converged` events of `route` from every node in `nodes`
/// have arrived; returns every event read.
async fn until_converged(stream: &mut EventStream, route: &str, nodes: &[&str]) -> Vec<Event> {
    let mut seen = Vec::new();
    let mut from = BTreeSet::new();
    let reading = async {
        while from.len() < nodes.len() {
            let event = stream
                .next()
                .await
                .expect("the stream reads")
                .unwrap_or_else(|| panic!("the stream ended after {seen:?}"));
            assert_ne!(event.kind, EventKind::Dropped, "dropped after {seen:?}");
            if event.kind == EventKind::NodeConverged && event.route.as_deref() == Some(route) {
                from.insert(event.node.clone().expect("a node"));
            }
            seen.push(event);
        }
    };
    tokio::time::timeout(GENEROUS, reading)
        .await
        .unwrap_or_else(|_| panic!("no node_converged for {route} from each of {nodes:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarting_with_hundreds_of_routes_is_no_news_to_event_streams() {
    let nats = NatsServer::start();
    let url = nats.url();
    let b_dir = tempfile::tempdir().unwrap();
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_node(&url, "b", Some(b_dir.path().to_path_buf())).await;
    until_live(&a, 2).await;
    let bytes = guests::bytes(guests::TAGGED_V1);
    let name = |i: usize| format!("r{i:03}");
    for i in 0..ROUTES {
        let (status, body) = a.deploy_bytes(&name(i), "?wait=none", bytes.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    sees_routes(&a, "b", ROUTES).await;

    // A client follows a's events from here; a change both nodes apply marks where.
    let client = AdminClient::new(&format!("http://{}", a.admin)).unwrap();
    let mut events = client.events(None, None).await.expect("the stream opens");
    a.deployed("marker", guests::TAGGED_V2).await;
    let before = until_converged(&mut events, "marker", &["a", "b"]).await;
    let resume_from = before.last().unwrap().id;

    // b restarts: it restores every route and reports them all in its first record.
    b.shutdown().await;
    let b = TestServer::start_node(&url, "b", Some(b_dir.path().to_path_buf())).await;
    until_live(&a, 2).await;
    sees_routes(&a, "b", ROUTES + 1).await;
    // None of it is news. For a dozen of a's looks at the records (every 250 ms), the stream
    // carries no node_converged, and it is not dropped.
    let quiet = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(quiet, events.next()).await {
            Err(_) => break,
            Ok(Ok(Some(event))) => {
                assert_ne!(event.kind, EventKind::NodeConverged, "{event:?}");
                assert_ne!(event.kind, EventKind::Dropped, "{event:?}");
            }
            Ok(other) => panic!("the stream ended: {other:?}"),
        }
    }

    // A change after the restart is news from both nodes, on the same stream.
    let started = Instant::now();
    let version = b.deployed(&name(0), guests::TAGGED_V2).await.version;
    let after = until_converged(&mut events, &name(0), &["a", "b"]).await;
    let converged: Vec<&Event> = after
        .iter()
        .filter(|e| e.kind == EventKind::NodeConverged)
        .collect();
    assert_eq!(converged.len(), 2, "{converged:?}");
    assert!(
        converged
            .iter()
            .all(|e| e.version.as_deref() == Some(version.as_str())),
        "{converged:?}"
    );
    eprintln!(
        "b restarted with {ROUTES} routes: no node_converged; the next change converged in {:?}",
        started.elapsed()
    );

    // A client resuming from before the restart finds it all in the buffer.
    let mut resumed = client
        .events(None, Some(resume_from))
        .await
        .expect("the stream opens");
    let replayed = until_converged(&mut resumed, &name(0), &["a", "b"]).await;
    assert_ne!(replayed[0].kind, EventKind::Missed, "{:?}", replayed[0]);
    a.shutdown().await;
    b.shutdown().await;
}
