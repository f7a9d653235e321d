//! What progressive delivery and a route's sandbox cost a request, each against a plain route
//! of the same guest on the same server: a 50 % sticky split (clients sending varied `x-user`
//! values), a 100 % shadow, and a route with 16 config pairs and a mounted directory.

use handoff_tests::guests;
use serde_json::json;

use super::table::{Plan, Table, Target};
use super::{Options, admin_json, put_route, put_route_with, start_handoff, upload, variant};

/// The delivery and sandbox rows.
pub async fn rows(opts: &Options, hello: &[u8], table: &mut Table, plan: Plan) {
    let dirs = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dirs.path().join("site")).unwrap();
    std::fs::write(dirs.path().join("site/hello.txt"), "hi").unwrap();
    let guest_dirs = dirs.path().to_str().expect("a UTF-8 path").to_owned();
    let (_server, data, admin) =
        start_handoff(&opts.handoff, &["--guest-dirs", guest_dirs.as_str()]);
    put_route(admin, "plain", hello).await;
    // The same code under another digest: the split's and the shadow's second version.
    let other = upload(admin, &variant(hello, 1)).await;
    put_route(admin, "split", hello).await;
    admin_json(
        admin,
        "POST",
        "/v1/routes/split/rollout",
        json!({"version": other, "steps": [50], "sticky": "header:x-user", "manual": true}),
    )
    .await;
    put_route(admin, "shadowed", hello).await;
    admin_json(
        admin,
        "PUT",
        "/v1/routes/shadowed/shadow",
        json!({"version": other, "percent": 100}),
    )
    .await;
    let hostile = guests::bytes(guests::HOSTILE);
    let mut query = String::from("?dir=site");
    for i in 0..16 {
        query.push_str(&format!("&config=KEY_{i}={}", "v".repeat(64)));
    }
    put_route_with(admin, "full", &query, &hostile).await;
    put_route(admin, "bare", &hostile).await;

    table
        .compare(
            "50 % sticky split (varied x-user)",
            ("split", &Target::get(data, "/split").users()),
            ("plain", &Target::get(data, "/plain").users()),
            plan,
            ("≥ 0.98", ""),
        )
        .await;
    table
        .compare(
            "100 % shadow",
            ("shadowed", &Target::get(data, "/shadowed")),
            ("no shadow", &Target::get(data, "/plain")),
            plan,
            ("", "client p99"),
        )
        .await;
    table
        .compare(
            "16 config pairs and a /data directory",
            ("with", &Target::get(data, "/full/ok")),
            ("without", &Target::get(data, "/bare/ok")),
            plan,
            ("≥ 0.98", ""),
        )
        .await;
}
