//! `handoff deploy | routes | status | delete` against a real `handoff serve`: tables for people,
//! the server's JSON with `--json`, and one line plus a documented exit code on every failure.

use handoff::api::{Deleted, Deployed, RouteList, RouteStatus};
use handoff::exit;
use handoff_tests::{guests, typed};

use crate::support::{get, handoff, json, serve};

const FAILED: i32 = exit::FAILED as i32;
const USAGE: i32 = exit::USAGE as i32;
const UNREACHABLE: i32 = exit::UNREACHABLE as i32;
const LOCAL: i32 = exit::LOCAL as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_routes_status_and_delete_round_trip_as_tables_and_json() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();

    let empty = handoff(&["routes", "--admin", admin]).await;
    assert!(empty.ok().starts_with("no routes"), "{empty:#?}");

    // v1 as a table.
    let v1 = handoff(&["deploy", "tagged", guests::TAGGED_V1, "--admin", admin]).await;
    let text = v1.ok();
    assert!(text.starts_with("created route tagged\n"), "{text}");
    for expected in [
        "\n  prefix    /tagged\n",
        "\n  version   sha256:",
        "\n  previous  none (new route)\n",
        "\n  compiled  in ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let v1_version = text
        .lines()
        .find_map(|l| l.strip_prefix("  version   "))
        .unwrap()
        .to_owned();
    assert_eq!(get(&ready, "/tagged").await, (200, "v1".into()));

    // v2 as JSON: the server's answer.
    let v2 = handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V2,
        "--admin",
        admin,
        "--json",
    ])
    .await;
    let body: Deployed = typed(&json(v2.ok()));
    assert_eq!(body.route, "tagged");
    assert!(body.changed && !body.created, "{body:?}");
    assert_eq!(body.previous_version.as_deref(), Some(v1_version.as_str()));
    let v2_version = body.version;
    assert_ne!(v2_version, v1_version);
    assert_eq!(get(&ready, "/tagged").await, (200, "v2".into()));

    // The same bytes again: unchanged.
    let again = handoff(&["deploy", "tagged", guests::TAGGED_V2, "--admin", admin]).await;
    assert!(
        again
            .ok()
            .starts_with("route tagged unchanged: this version was already active\n"),
        "{again:#?}"
    );

    // A prefix and settings travel in the query, encoded.
    let env = handoff(&[
        "deploy",
        "env",
        guests::HOSTILE,
        "--prefix",
        "/api/hostile",
        "--config",
        "GREETING=hello world & more",
        "--config",
        "PLUS=a+b",
        "--admin",
        admin,
    ])
    .await;
    assert!(env.ok().contains("  prefix    /api/hostile\n"), "{env:#?}");
    let (status, seen) = get(&ready, "/api/hostile/env").await;
    assert_eq!(status, 200);
    assert!(seen.contains("GREETING=hello world & more\n"), "{seen}");
    assert!(seen.contains("PLUS=a+b\n"), "{seen}");

    // routes: a table with a header and one row per route, and the server's JSON.
    let routes = handoff(&["routes", "--admin", admin]).await;
    let text = routes.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ROUTE",
            "PREFIX",
            "VERSION",
            "REQUESTS",
            "IN-FLIGHT",
            "DRAINING"
        ]
    );
    let tagged_row = lines.iter().find(|l| l.starts_with("tagged ")).unwrap();
    let cells: Vec<&str> = tagged_row.split_whitespace().collect();
    assert_eq!(cells[1], "/tagged");
    assert_eq!(cells[2], &v2_version["sha256:".len().."sha256:".len() + 12]);
    assert_eq!(cells[3], "2", "two requests so far: {tagged_row}");
    let routes: RouteList = typed(&json(
        handoff(&["routes", "--admin", admin, "--json"]).await.ok(),
    ));
    let names: Vec<&str> = routes.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"tagged") && names.contains(&"env"),
        "{names:?}"
    );

    // status: one route in detail, and the server's JSON.
    let status = handoff(&["status", "env", "--admin", admin]).await;
    let text = status.ok();
    assert!(text.contains("route     env\n"), "{text}");
    assert!(text.contains("prefix    /api/hostile\n"), "{text}");
    assert!(
        text.contains("config    GREETING=hello world & more PLUS=a+b\n"),
        "{text}"
    );
    assert!(text.contains("1 on the route"), "{text}");
    let status: RouteStatus = typed(&json(
        handoff(&["status", "tagged", "--admin", admin, "--json"])
            .await
            .ok(),
    ));
    assert_eq!(status.active.version, v2_version);
    assert_eq!(status.prefix, "/tagged");

    // delete: the route stops serving at once.
    let deleted = handoff(&["delete", "tagged", "--admin", admin]).await;
    assert_eq!(
        deleted.ok(),
        format!(
            "deleted route tagged (version {}; nothing in flight)\n",
            &v2_version["sha256:".len().."sha256:".len() + 12]
        )
    );
    assert_eq!(get(&ready, "/tagged").await.0, 404);
    let deleted: Deleted = typed(&json(
        handoff(&["delete", "env", "--admin", admin, "--json"])
            .await
            .ok(),
    ));
    assert!(deleted.deleted);
    assert_eq!(deleted.route, "env");
    let empty = handoff(&["routes", "--admin", admin]).await;
    assert!(empty.ok().starts_with("no routes"), "{empty:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_exits_3_naming_the_address() {
    // An address that was listening a moment ago and is not any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let reason = format!("cannot reach the handoff admin API at {url}: ");
    for args in [
        vec!["routes"],
        vec!["routes", "--json"],
        vec!["status", "hello"],
        vec!["delete", "hello"],
        vec!["deploy", "hello", guests::TAGGED_V1],
    ] {
        let mut args = args.clone();
        args.extend(["--admin", &url]);
        let output = handoff(&args).await;
        output.fails(UNREACHABLE, &reason);
        assert!(
            output.stderr.contains("is `handoff serve` running?"),
            "{output:#?}"
        );
        assert!(output.stdout.is_empty(), "{output:#?}");
    }
    // Without --admin, HANDOFF_ADMIN_URL says where the server is.
    let mut command = crate::support::command(&["routes"]);
    command.env("HANDOFF_ADMIN_URL", &url);
    let output = crate::support::run_within(std::time::Duration::from_secs(60), command).await;
    output.fails(UNREACHABLE, &reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_component_file_exits_4_before_contacting_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    let missing = missing.to_str().unwrap();
    // The admin URL is never used: nothing listens on port 9 (discard), and it is not asked.
    let output = handoff(&["deploy", "hello", missing, "--admin", "http://127.0.0.1:9"]).await;
    output.fails(LOCAL, &format!("cannot read the component {missing}: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_wasm_prints_the_servers_400_detail() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("index.html");
    std::fs::write(&page, "<html>hello</html>").unwrap();
    let page = page.to_str().unwrap();

    let output = handoff(&["deploy", "hello", page, "--admin", &admin]).await;
    output.fails(
        FAILED,
        "deploy refused (400 Bad Request): the upload is not a WebAssembly binary",
    );
    assert!(output.stdout.is_empty(), "{output:#?}");

    // With --json the problem document is on stdout too.
    let output = handoff(&["deploy", "hello", page, "--admin", &admin, "--json"]).await;
    output.fails(FAILED, "the upload is not a WebAssembly binary");
    let problem = json(&output.stdout);
    assert_eq!(problem["status"], 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the upload is not")
    );

    // Nothing was deployed.
    assert!(
        handoff(&["routes", "--admin", &admin])
            .await
            .ok()
            .starts_with("no routes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_prints_the_servers_404_detail() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    for command in ["status", "delete"] {
        let output = handoff(&[command, "nope", "--admin", &admin]).await;
        output.fails(
            FAILED,
            &format!("{command} refused (404 Not Found): there is no route named `nope`"),
        );
        let output = handoff(&[command, "nope", "--admin", &admin, "--json"]).await;
        output.fails(FAILED, "there is no route named `nope`");
        assert_eq!(json(&output.stdout)["status"], 404);
    }
    // A name the server cannot accept: its 400 detail, whatever characters it holds.
    let output = handoff(&["status", "No/pe", "--admin", &admin]).await;
    output.fails(FAILED, "400 Bad Request): a route name may use only a-z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let output = handoff(&["routes", "--admin", "ftp://127.0.0.1:8081"]).await;
    output.fails(USAGE, "https://HOST:PORT");
    let output = handoff(&["deploy", "only-a-route"]).await;
    assert_eq!(output.code, USAGE, "{output:#?}");
    let help = handoff(&["--help"]).await;
    let text = help.ok();
    for code in [0, 1, 2, 3, 4, 64] {
        assert!(text.contains(&format!("\n  {code:<3} ")), "{text}");
    }
}
