//! A small JSON API over a fixed catalog, built with the SDK's router. Each request runs in a
//! fresh instance, so nothing a request sends is kept: `POST` validates and echoes.
//!
//! * `GET    /<route>`               — what this API offers
//! * `GET    /<route>/items`         — every item; `?max_price_cents=N` filters
//! * `GET    /<route>/items/:id`     — one item, or 404
//! * `POST   /<route>/items`         — body `{"name": "...", "price_cents": N}`: 201 with the
//!   item it would create; 400 for a body that is not that JSON, 422 for an empty name or a
//!   zero price
//!
//! Client errors (4xx) answer `{"error": "what to fix"}`; server errors keep the SDK's plain
//! 500, which says nothing internal and logs the cause.

use handoff_sdk::{
    Error, Request, RequestExt, Response, ResponseExt, Result, Router, StatusCode, response,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Item {
    id: u32,
    name: String,
    price_cents: u32,
}

/// The fixed catalog: id, name, price in cents.
const CATALOG: &[(u32, &str, u32)] = &[(1, "lamp", 2_500), (2, "chair", 7_900), (3, "mug", 900)];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    name: String,
    price_cents: u32,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn handle(req: Request) -> Result<Response> {
    Router::new()
        .get("/", index)
        .get("/items", list)
        .get("/items/:id", show)
        .post("/items", create)
        .handle(req)
        .or_else(client_error_as_json)
}

/// What `GET /<route>` answers.
#[derive(Serialize)]
struct Index {
    name: &'static str,
    endpoints: &'static [&'static str],
}

fn index(_req: Request) -> Result<Response> {
    response::json(&Index {
        name: "json-api",
        endpoints: &["GET /items", "GET /items/:id", "POST /items"],
    })
}

fn catalog() -> impl Iterator<Item = Item> {
    CATALOG.iter().map(|&(id, name, price_cents)| Item {
        id,
        name: name.to_owned(),
        price_cents,
    })
}

fn list(req: Request) -> Result<Response> {
    let max: Option<u32> = req.query().get_as("max_price_cents")?;
    let items: Vec<Item> = catalog()
        .filter(|item| max.is_none_or(|max| item.price_cents <= max))
        .collect();
    response::json(&items)
}

fn show(req: Request) -> Result<Response> {
    let id: u32 = req.params().get_as("id")?;
    let item = catalog()
        .find(|item| item.id == id)
        .ok_or_else(|| Error::not_found(format!("there is no item {id}")))?;
    response::json(&item)
}

fn create(req: Request) -> Result<Response> {
    let new: NewItem = req.into_body().json()?;
    let name = new.name.trim();
    if name.is_empty() {
        return Err(unprocessable("`name` must not be empty"));
    }
    if new.price_cents == 0 {
        return Err(unprocessable("`price_cents` must be greater than 0"));
    }
    let item = Item {
        id: CATALOG.len() as u32 + 1,
        name: name.to_owned(),
        price_cents: new.price_cents,
    };
    // Relative to the request's `/<route>/items`, so it is right whatever the route's prefix.
    let location = format!("items/{}", item.id);
    Ok(response::json(&item)?
        .with_status(StatusCode::CREATED)
        .with_header("location", location))
}

fn unprocessable(message: &'static str) -> Error {
    Error::with_status(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Renders 4xx errors (the router's 404 and 405 included) as `{"error": ...}`, keeping their
/// headers (a 405's `Allow`); leaves 5xx to the SDK.
fn client_error_as_json(error: Error) -> Result<Response> {
    if !error.status().is_client_error() {
        return Err(error);
    }
    let body = ErrorBody {
        error: format!("{error:#}"),
    };
    let mut response = response::json(&body)?.with_status(error.status());
    response.headers_mut().extend(error.headers().clone());
    Ok(response)
}

handoff_sdk::export!(handle);

#[cfg(test)]
mod tests {
    //! Host tests: `cargo test --manifest-path examples/Cargo.toml -p json-api` (or plain
    //! `cargo test` in `examples/`).

    use super::*;
    use handoff_sdk::{Body, Method, http};

    fn call(method: Method, path: &str, body: &'static str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body))
            .unwrap();
        let response = handle(req).unwrap();
        let status = response.status();
        (status, response.into_body().text().unwrap())
    }

    #[test]
    fn lists_filters_and_shows_items() {
        let (status, body) = call(Method::GET, "/shop/items?max_price_cents=1000", "");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"[{"id":3,"name":"mug","price_cents":900}]"#);
        let (status, body) = call(Method::GET, "/shop/items/2", "");
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::OK,
                r#"{"id":2,"name":"chair","price_cents":7900}"#
            )
        );
    }

    #[test]
    fn bad_input_is_a_json_client_error() {
        let (status, body) = call(Method::GET, "/shop/items/9", "");
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, r#"{"error":"there is no item 9"}"#)
        );
        let (status, _) = call(Method::GET, "/shop/items/x", "");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = call(Method::POST, "/shop/items", r#"{"name":"x"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("missing field `price_cents`"), "{body}");
        let (status, _) = call(
            Method::POST,
            "/shop/items",
            r#"{"name":" ","price_cents":1}"#,
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = call(Method::DELETE, "/shop/items", "");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn creating_answers_201_with_a_location() {
        let req = http::Request::post("/shop/items")
            .body(Body::from(r#"{"name":"desk","price_cents":12000}"#))
            .unwrap();
        let response = handle(req).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["location"], "items/4");
    }
}
