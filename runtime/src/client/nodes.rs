//! `handoff nodes` and how a change's answer from a cluster is told: every node that did not
//! activate it is named, and a partial change exits non-zero (it is recorded, but some live
//! node does not serve it).

use std::fmt::Write as _;

use http::Method;

use super::admin::{Admin, print};
use super::render::{short, table};
use crate::api::{Convergence, NodeList};
use crate::exit::{self, Failure};

/// `handoff nodes`.
pub async fn nodes(admin: &Admin) -> Result<(), Failure> {
    let client = admin.client()?;
    let body: NodeList = client
        .call(
            "listing the nodes",
            Method::GET,
            "/v1/nodes",
            None,
            admin.json,
        )
        .await?;
    if !admin.json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// The nodes, one per row, then every route a node could not apply.
pub fn render(body: &NodeList) -> String {
    let header = [
        "NODE", "ALIVE", "READY", "ROUTES", "POSITION", "ENGINE", "HANDOFF", "ADMIN",
    ];
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let rows: Vec<[String; 8]> = body
        .nodes
        .iter()
        .map(|node| {
            let converged = node.routes.iter().filter(|r| r.converged).count();
            let mut name = node.node.clone();
            if node.node == body.this {
                name.push_str(" *");
            }
            [
                name,
                yes_no(node.alive),
                if node.leaving {
                    "leaving".to_owned()
                } else {
                    yes_no(node.ready)
                },
                format!("{converged}/{} converged", node.routes.len()),
                node.position.to_string(),
                node.engine_key.clone(),
                node.handoff_version.clone(),
                node.admin.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = String::new();
    if !body.connected {
        let _ = writeln!(
            out,
            "node {} cannot reach the cluster (NATS): it serves its last state and refuses changes; this list is as it last saw it",
            body.this
        );
    }
    out.push_str(&table(&header, &rows));
    for node in &body.nodes {
        for route in node.routes.iter().filter(|r| !r.converged) {
            let serves = route.version.as_deref().map_or("nothing", short);
            let _ = write!(
                out,
                "{}: route {} at revision {} serves {serves}",
                node.node, route.route, route.revision
            );
            match &route.error {
                Some(error) => {
                    let _ = writeln!(out, "; its last change failed: {error}");
                }
                None => out.push_str("; not yet at the current revision\n"),
            }
        }
    }
    out
}

/// One line per node that did not activate a change (none when every node did).
pub fn convergence(cluster: &Convergence) -> String {
    let mut out = String::new();
    if cluster.wait != "all" {
        let _ = writeln!(
            out,
            "  nodes     not waited for (wait={}); `handoff nodes` shows them converge",
            cluster.wait
        );
        return out;
    }
    let activated: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.state == "activated")
        .map(|n| n.node.as_str())
        .collect();
    let _ = writeln!(out, "  nodes     activated on {}", activated.join(", "));
    for node in cluster.nodes.iter().filter(|n| n.state != "activated") {
        let _ = write!(out, "  node {}    {}", node.node, node.state);
        match &node.error {
            Some(error) => {
                let _ = writeln!(out, ": {error}");
            }
            None => out.push('\n'),
        }
    }
    out
}

/// A partial change (some live node did not activate it) as a failure naming those nodes.
pub fn partial(what: &str, cluster: Option<&Convergence>) -> Result<(), Failure> {
    let Some(cluster) = cluster.filter(|c| !c.converged) else {
        return Ok(());
    };
    let missing: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.state != "activated" && n.state != "gone")
        .map(|n| match &n.error {
            Some(error) => format!("{} ({}: {error})", n.node, n.state),
            None => format!("{} ({})", n.node, n.state),
        })
        .collect();
    Err(Failure::new(
        exit::FAILED,
        format!(
            "{what} is partial: recorded at revision {}, but not activated on {}; those nodes keep serving what they had (see `handoff nodes`)",
            cluster.revision,
            missing.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeAnswer, NodeRouteStatus, NodeStatus};

    fn answer(node: &str, state: &str, error: Option<&str>) -> NodeAnswer {
        NodeAnswer {
            node: node.into(),
            state: state.into(),
            revision: Some(3),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn a_partial_change_names_every_node_that_did_not_activate_it() {
        let mut cluster = Convergence {
            wait: "all".into(),
            revision: 7,
            converged: true,
            nodes: vec![
                answer("a", "activated", None),
                answer("b", "activated", None),
            ],
        };
        assert!(partial("deploy", Some(&cluster)).is_ok());
        assert!(partial("deploy", None).is_ok());
        cluster.converged = false;
        cluster.nodes.push(answer("c", "timeout", None));
        cluster.nodes.push(answer("d", "failed", Some("no memory")));
        let failure = partial("deploy", Some(&cluster)).unwrap_err();
        assert_eq!(failure.code, exit::FAILED);
        assert!(
            failure
                .message
                .contains("not activated on c (timeout), d (failed: no memory)"),
            "{failure}"
        );
        let text = convergence(&cluster);
        assert!(text.contains("activated on a, b\n"), "{text}");
        assert!(text.contains("node c    timeout\n"), "{text}");
    }

    #[test]
    fn nodes_show_liveness_and_what_did_not_converge() {
        let node = |name: &str, converged: bool| NodeStatus {
            node: name.into(),
            alive: true,
            ready: true,
            leaving: false,
            admin: Some("127.0.0.1:9".into()),
            data: None,
            handoff_version: "0.1.0".into(),
            engine_key: "00ff".into(),
            position: 4,
            last_seen_ms: 10,
            routes: vec![NodeRouteStatus {
                route: "api".into(),
                revision: 4,
                version: Some("sha256:00112233445566778899".into()),
                converged,
                error: (!converged).then(|| "compile failed".into()),
            }],
        };
        let body = NodeList {
            this: "a".into(),
            connected: true,
            nodes: vec![node("a", true), node("b", false)],
        };
        let text = render(&body);
        assert!(text.starts_with("NODE "), "{text}");
        assert!(text.contains("a *"), "{text}");
        assert!(text.contains("1/1 converged"), "{text}");
        assert!(text.contains("0/1 converged"), "{text}");
        assert!(
            text.contains("b: route api at revision 4 serves 001122334455"),
            "{text}"
        );
        assert!(
            text.contains("its last change failed: compile failed"),
            "{text}"
        );
    }
}
