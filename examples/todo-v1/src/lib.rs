//! A to-do list kept in the route's own key-value bucket, version 1: an item is
//! `{"title": "...", "done": false}`. Version 2 (`todo-v2`) changes that shape; both serve the
//! same data side by side during a swap or a rollout, with no migration job (see `docs/kv.md`).
//!
//! * `GET    /<route>`            — what this is
//! * `GET    /<route>/items`      — every item, oldest first
//! * `POST   /<route>/items`      — `{"title": "..."}`: 201 with the new item
//! * `GET    /<route>/items/:id`  — one item, or 404
//! * `PATCH  /<route>/items/:id`  — `{"title"?: "...", "done"?: true}`
//! * `DELETE /<route>/items/:id`  — 204
//!
//! Every response carries `todo-version: 1`. Client errors answer `{"error": "what to fix"}`.

use handoff_sdk::kv::{Bucket, Document};
use handoff_sdk::{
    Error, Request, RequestExt, Response, ResponseExt, Result, Router, StatusCode, response,
};
use serde::{Deserialize, Serialize};

/// What this version says in its `todo-version` header.
pub const VERSION: &str = "1";

/// An item as version 1 stores it (schema 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Todo {
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

impl Document for Todo {
    const SCHEMA: u32 = 1;
}

/// An item with its id, as the API shows it.
#[derive(Serialize)]
struct Shown {
    id: u64,
    #[serde(flatten)]
    todo: Todo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTodo {
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    title: Option<String>,
    done: Option<bool>,
}

/// The bucket key of item `id` (zero-padded, so keys list in id order).
fn key(id: u64) -> String {
    format!("todo:{id:010}")
}

/// Handles one request.
pub fn handle(req: Request) -> Result<Response> {
    let response = Router::new()
        .get("/", index)
        .get("/items", list)
        .post("/items", create)
        .get("/items/:id", show)
        .patch("/items/:id", change)
        .delete("/items/:id", remove)
        .handle(req)
        .or_else(client_error_as_json)?;
    Ok(response.with_header("todo-version", VERSION))
}

handoff_sdk::export!(handle);

fn index(_req: Request) -> Result<Response> {
    Ok(response::text(format!(
        "todo, version {VERSION}: GET/POST items, GET/PATCH/DELETE items/:id\n"
    )))
}

fn list(_req: Request) -> Result<Response> {
    let bucket = Bucket::route()?;
    let mut items = Vec::new();
    for key in bucket.list("todo:")? {
        let id = key["todo:".len()..].parse().unwrap_or(0);
        // Deleted between the listing and the read: left out.
        if let Some(doc) = bucket.get_doc::<Todo>(&key)? {
            items.push(Shown {
                id,
                todo: doc.value,
            });
        }
    }
    response::json(&items)
}

fn create(req: Request) -> Result<Response> {
    let new: NewTodo = req.into_body().json()?;
    let title = new.title.trim();
    if title.is_empty() {
        return Err(Error::with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`title` must not be empty",
        ));
    }
    let bucket = Bucket::route()?;
    let id = bucket.increment("next-id", 1)? as u64;
    let todo = Todo {
        title: title.to_owned(),
        done: false,
    };
    bucket.put_doc(&key(id), &todo)?;
    Ok(response::json(&Shown { id, todo })?.with_status(StatusCode::CREATED))
}

fn id_of(req: &Request) -> Result<u64> {
    req.params().get_as("id")
}

fn show(req: Request) -> Result<Response> {
    let id = id_of(&req)?;
    let doc = Bucket::route()?
        .get_doc::<Todo>(&key(id))?
        .ok_or_else(|| Error::not_found(format!("there is no item {id}")))?;
    response::json(&Shown {
        id,
        todo: doc.value,
    })
}

fn change(req: Request) -> Result<Response> {
    let id = id_of(&req)?;
    let change: Change = req.into_body().json()?;
    let todo = Bucket::route()?
        .update_doc::<Todo, _>(&key(id), |current| {
            Ok(current.map(|mut todo| {
                if let Some(title) = &change.title {
                    todo.title = title.clone();
                }
                if let Some(done) = change.done {
                    todo.done = done;
                }
                todo
            }))
        })?
        .ok_or_else(|| Error::not_found(format!("there is no item {id}")))?;
    response::json(&Shown { id, todo })
}

fn remove(req: Request) -> Result<Response> {
    Bucket::route()?.delete(&key(id_of(&req)?))?;
    Ok(response::status(StatusCode::NO_CONTENT))
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// Renders 4xx errors as `{"error": ...}`; leaves 5xx to the SDK.
fn client_error_as_json(error: Error) -> Result<Response> {
    if !error.status().is_client_error() {
        return Err(error);
    }
    Ok(response::json(&ErrorBody {
        error: error.to_string(),
    })?
    .with_status(error.status()))
}

#[cfg(test)]
mod tests {
    use handoff_sdk::{Body, Method, http};

    use super::*;

    fn call(method: Method, path: &str, body: &str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = handle(req).unwrap();
        let status = response.status();
        (status, response.into_body().text().unwrap())
    }

    #[test]
    fn items_are_created_changed_listed_and_deleted() {
        handoff_sdk::kv::testing::reset();
        let (status, body) = call(Method::POST, "/todo/items", r#"{"title": "milk"}"#);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body, r#"{"id":1,"title":"milk","done":false}"#);
        call(Method::PATCH, "/todo/items/1", r#"{"done": true}"#);
        assert_eq!(
            call(Method::GET, "/todo/items", "").1,
            r#"[{"id":1,"title":"milk","done":true}]"#
        );
        assert_eq!(
            call(Method::DELETE, "/todo/items/1", "").0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(Method::GET, "/todo/items/1", "").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(Method::POST, "/todo/items", r#"{"title": " "}"#).0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
