//! The to-do list, version 2: an item's `done: bool` becomes `status` (`open`, `done` or
//! `archived`), and items get `tags`. It serves the data version 1 (`todo-v1`) wrote, and
//! while version 1 still serves beside it (a swap's drain, a rollout's split), it writes only
//! documents version 1 can read:
//!
//! * an item version 1 wrote (schema 1) is upgraded when it is read ([`Todo::upgrade`]) and
//!   stored in schema 2 only when this version next writes it;
//! * every item this version writes still carries `done` ([`Todo::expand`]), and whatever
//!   version 1 does not know (`status`, `tags`) survives version 1's writes (the SDK keeps
//!   unknown fields).
//!
//! Once version 1 serves nowhere, a version 3 drops `expand` (the contract step).
//!
//! * `GET    /<route>`            — what this is
//! * `GET    /<route>/items[?status=S]` — every item, oldest first
//! * `POST   /<route>/items`      — `{"title": "...", "tags"?: [...]}`: 201 with the new item
//! * `GET    /<route>/items/:id`  — one item, or 404
//! * `PATCH  /<route>/items/:id`  — `{"title"?, "status"?, "tags"?}`
//! * `DELETE /<route>/items/:id`  — 204
//!
//! Every response carries `todo-version: 2`.

use handoff_sdk::kv::{Bucket, Document};
use handoff_sdk::{
    Error, Request, RequestExt, Response, ResponseExt, Result, Router, StatusCode, response,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What this version says in its `todo-version` header.
pub const VERSION: &str = "2";

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// To do.
    Open,
    /// Done.
    Done,
    /// Put away (not done).
    Archived,
}

/// An item as version 2 stores it (schema 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Todo {
    /// What to do.
    pub title: String,
    /// Where it stands.
    pub status: Status,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Document for Todo {
    const SCHEMA: u32 = 2;

    /// A schema-1 item (version 1 wrote it last): `status` from its `done`. If it still has
    /// the `status` version 2 wrote earlier and that agrees with `done` (`archived` is not
    /// done), it is kept: version 1 only changed what it knows.
    fn upgrade(from: u32, doc: &mut Map<String, Value>) -> Result<()> {
        if from < 2 {
            let done = doc.get("done").and_then(Value::as_bool).unwrap_or(false);
            let kept = doc
                .get("status")
                .and_then(Value::as_str)
                .filter(|status| (*status == "done") == done)
                .map(str::to_owned);
            let status = kept.unwrap_or_else(|| if done { "done" } else { "open" }.to_owned());
            doc.insert("status".into(), status.into());
        }
        Ok(())
    }

    /// Version 1 may still serve: keep writing the `done` it reads (the expand step).
    fn expand(&self, doc: &mut Map<String, Value>) {
        doc.insert("done".into(), (self.status == Status::Done).into());
    }
}

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
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    title: Option<String>,
    status: Option<Status>,
    tags: Option<Vec<String>>,
}

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

fn list(req: Request) -> Result<Response> {
    let wanted: Option<String> = req.query().get_as("status")?;
    let bucket = Bucket::route()?;
    let mut items = Vec::new();
    for key in bucket.list("todo:")? {
        let id = key["todo:".len()..].parse().unwrap_or(0);
        if let Some(doc) = bucket.get_doc::<Todo>(&key)? {
            let status = serde_json::to_value(doc.value.status)?;
            if wanted.as_deref().is_none_or(|w| status == w) {
                items.push(Shown {
                    id,
                    todo: doc.value,
                });
            }
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
        status: Status::Open,
        tags: new.tags,
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
                if let Some(status) = change.status {
                    todo.status = status;
                }
                if let Some(tags) = &change.tags {
                    todo.tags = tags.clone();
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
    fn reads_what_version_1_wrote_and_writes_what_it_can_read() {
        handoff_sdk::kv::testing::reset();
        let bucket = Bucket::route().unwrap();
        // As version 1 stores an item.
        bucket
            .set(&key(7), r#"{"_schema":1,"title":"milk","done":true}"#)
            .unwrap();
        assert_eq!(
            call(Method::GET, "/todo/items/7", "").1,
            r#"{"id":7,"title":"milk","status":"done","tags":[]}"#
        );
        // Archived by version 2: stored in schema 2, still with the `done` version 1 reads.
        call(
            Method::PATCH,
            "/todo/items/7",
            r#"{"status": "archived", "tags": ["home"]}"#,
        );
        let stored: Value = serde_json::from_slice(&bucket.get(&key(7)).unwrap().unwrap()).unwrap();
        assert_eq!(stored["_schema"], 2);
        assert_eq!(stored["done"], false);
        assert_eq!(
            call(Method::GET, "/todo/items?status=archived", "").1,
            r#"[{"id":7,"title":"milk","status":"archived","tags":["home"]}]"#
        );
    }
}
