//! The router's tests: matching, ranking, methods, fallbacks and pattern checks.

use super::*;
use crate::{Body, RequestExt, response};

#[test]
fn serve_awaits_async_handlers_and_calls_blocking_ones() {
    let router = || {
        Router::new()
            .get("/sync", |_| Ok(response::text("sync\n")))
            .get_async("/items/:id", |req: Request| async move {
                crate::time::sleep(std::time::Duration::from_millis(1)).await;
                Ok(response::text(format!(
                    "item {}\n",
                    req.param("id").unwrap()
                )))
            })
            .fallback_async(|_| async { Ok(response::text("fallback\n")) })
    };
    let serve = |method, path| {
        crate::block_on(router().serve(request(method, path)))
            .map(|r| r.into_body().text().unwrap())
            .map_err(|e| e.status())
    };
    assert_eq!(serve(Method::GET, "/r/sync"), Ok("sync\n".into()));
    assert_eq!(serve(Method::GET, "/r/items/7"), Ok("item 7\n".into()));
    assert_eq!(serve(Method::HEAD, "/r/items/7"), Ok("item 7\n".into()));
    assert_eq!(serve(Method::GET, "/r/else"), Ok("fallback\n".into()));
    assert_eq!(
        serve(Method::POST, "/r/items/7"),
        Err(StatusCode::METHOD_NOT_ALLOWED)
    );
    // The blocking dispatch cannot await: a 500 that says what to call instead.
    let error = router()
        .handle(request(Method::GET, "/r/items/7"))
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error.to_string().contains("Router::serve"), "{error}");
}

fn request(method: Method, path: &str) -> Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap()
}

/// A handler that answers with its name and the params it saw.
fn named(name: &'static str) -> impl Fn(Request) -> Result<Response> {
    move |req| {
        let params: Vec<String> = req
            .params()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Ok(response::text(format!("{name} {}", params.join(" "))))
    }
}

fn answer(router: &Router, method: Method, path: &str) -> std::result::Result<String, StatusCode> {
    router
        .handle(request(method, path))
        .map(|r| r.into_body().text().unwrap().trim_end().to_owned())
        .map_err(|e| e.status())
}

#[test]
fn patterns_match_below_the_first_segment_by_default() {
    let router = Router::new()
        .get("/", named("root"))
        .get("/items", named("list"))
        .get("/items/:id", named("show"));
    assert_eq!(answer(&router, Method::GET, "/shop").unwrap(), "root");
    assert_eq!(answer(&router, Method::GET, "/shop/").unwrap(), "root");
    assert_eq!(
        answer(&router, Method::GET, "/shop/items/").unwrap(),
        "list"
    );
    assert_eq!(
        answer(&router, Method::GET, "/shop/items/7").unwrap(),
        "show id=7"
    );
    assert_eq!(
        answer(&router, Method::GET, "/shop/items/7/x"),
        Err(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        answer(&router, Method::GET, "/items"),
        Ok("root".into()),
        "the first segment is the route"
    );
}

#[test]
fn an_explicit_prefix_replaces_the_first_segment_rule() {
    let router = Router::new()
        .with_prefix("/api/v1")
        .get("/", named("root"))
        .get("/items/:id", named("show"));
    assert_eq!(answer(&router, Method::GET, "/api/v1").unwrap(), "root");
    assert_eq!(
        answer(&router, Method::GET, "/api/v1/items/a%20b").unwrap(),
        "show id=a b"
    );
    assert_eq!(
        answer(&router, Method::GET, "/api/items/1"),
        Err(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        answer(&router, Method::GET, "/api/v10"),
        Err(StatusCode::NOT_FOUND)
    );

    let whole = Router::new().with_prefix("/").get("/a/:b", named("full"));
    assert_eq!(answer(&whole, Method::GET, "/a/1").unwrap(), "full b=1");
}

#[test]
fn the_most_specific_pattern_wins_whatever_the_order() {
    let router = Router::new()
        .get("/files/*path", named("rest"))
        .get("/files/:name", named("param"))
        .get("/files/readme", named("literal"))
        .get("/:a/:b", named("params"));
    assert_eq!(
        answer(&router, Method::GET, "/r/files/readme").unwrap(),
        "literal"
    );
    assert_eq!(
        answer(&router, Method::GET, "/r/files/other").unwrap(),
        "param name=other"
    );
    assert_eq!(
        answer(&router, Method::GET, "/r/files/a/b").unwrap(),
        "rest path=a/b"
    );
    assert_eq!(
        answer(&router, Method::GET, "/r/files").unwrap(),
        "rest path="
    );
    assert_eq!(
        answer(&router, Method::GET, "/r/x/y").unwrap(),
        "params a=x b=y"
    );
}

#[test]
fn ties_go_to_the_first_added_and_exact_methods_beat_any() {
    let router = Router::new()
        .any("/x", named("any"))
        .get("/x", named("get"))
        .get("/x", named("second get"));
    assert_eq!(answer(&router, Method::GET, "/r/x").unwrap(), "get");
    assert_eq!(answer(&router, Method::POST, "/r/x").unwrap(), "any");
}

#[test]
fn head_falls_back_to_get_but_prefers_its_own_handler() {
    let router = Router::new()
        .get("/a", named("get a"))
        .get("/b", named("get b"))
        .route(Method::HEAD, "/b", named("head b"));
    assert_eq!(answer(&router, Method::HEAD, "/r/a").unwrap(), "get a");
    assert_eq!(answer(&router, Method::HEAD, "/r/b").unwrap(), "head b");
}

#[test]
fn a_known_path_with_another_method_is_405_with_allow() {
    let router = Router::new()
        .get("/items", named("list"))
        .post("/items", named("create"))
        .delete("/items/:id", named("delete"));
    let error = router.handle(request(Method::PUT, "/r/items")).unwrap_err();
    assert_eq!(error.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        error.to_string(),
        "PUT is not allowed on /r/items; allowed: GET, HEAD, POST"
    );
    let response = error.into_response();
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD, POST");
}

#[test]
fn unknown_paths_are_404_or_go_to_the_fallback() {
    let router = Router::new().get("/", named("root"));
    let error = router.handle(request(Method::GET, "/r/nope")).unwrap_err();
    assert_eq!(error.status(), StatusCode::NOT_FOUND);
    assert_eq!(error.to_string(), "no handler for GET /r/nope");

    let router = router.fallback(named("fallback"));
    assert_eq!(answer(&router, Method::GET, "/r/nope").unwrap(), "fallback");
}

#[test]
fn handler_errors_pass_through() {
    let router = Router::new().get("/fail", |_| Err(Error::msg("broken")));
    assert_eq!(
        answer(&router, Method::GET, "/r/fail"),
        Err(StatusCode::INTERNAL_SERVER_ERROR)
    );
}

#[test]
#[should_panic(expected = "must start with `/`")]
fn patterns_must_be_absolute() {
    let _ = Router::new().get("items", named("x"));
}

#[test]
#[should_panic(expected = "must be the last segment")]
fn rest_must_be_last() {
    let _ = Router::new().get("/*rest/x", named("x"));
}

#[test]
#[should_panic(expected = "appears twice")]
fn parameter_names_are_unique() {
    let _ = Router::new().get("/:id/:id", named("x"));
}
