//! Which WASI a component is for ([`Wasi`]), and a linked, pre-instantiated component for the
//! engine of its WASI ([`Pre`]).

use std::sync::{Arc, Weak};

use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::host::Host;

/// Which WASI a component is written for, and so which engine compiles and runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Wasi {
    /// WASI 0.2: exports `wasi:http/incoming-handler@0.2.x` (the `wasi:http/proxy` world).
    #[default]
    P2,
    /// WASI 0.3: exports `wasi:http/handler@0.3.x` (the `wasi:http/service` world), lifted
    /// with the component model's async.
    P3,
}

/// The export that makes a component a WASI 0.3 handler.
pub(super) const P3_HANDLER: &str = "wasi:http/handler@0.3";

impl Wasi {
    /// Both, in order.
    pub const ALL: [Wasi; 2] = [Wasi::P2, Wasi::P3];

    /// Its version as the status shows it: `0.2` or `0.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P2 => "0.2",
            Self::P3 => "0.3",
        }
    }

    /// The WASI named `name` (see [`Wasi::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|wasi| wasi.as_str() == name)
    }

    /// Which WASI the component `bytes` is for: 0.3 if it exports `wasi:http/handler@0.3.x`,
    /// else 0.2 (compiling and linking then say what else is wrong with it). Reads the
    /// component's own export section only, not those of the components nested in it.
    pub fn of(bytes: &[u8]) -> Self {
        use wasmparser::{Parser, Payload};
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else {
                break;
            };
            match payload {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => match depth.checked_sub(1) {
                    Some(outer) => depth = outer,
                    None => break,
                },
                Payload::ComponentExportSection(exports) if depth == 0 => {
                    for export in exports.into_iter().flatten() {
                        if export.name.name.starts_with(P3_HANDLER) {
                            return Self::P3;
                        }
                    }
                }
                _ => {}
            }
        }
        Self::P2
    }
}

impl std::fmt::Display for Wasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A linked, pre-instantiated component, for the engine of its WASI.
#[derive(Clone)]
pub enum Pre {
    /// A WASI 0.2 `wasi:http/proxy` component.
    P2(Arc<ProxyPre<Host>>),
    /// A WASI 0.3 `wasi:http/service` component.
    P3(Arc<ServicePre<Host>>),
}

impl Pre {
    /// Which WASI it is for.
    pub fn wasi(&self) -> Wasi {
        match self {
            Self::P2(_) => Wasi::P2,
            Self::P3(_) => Wasi::P3,
        }
    }

    pub(super) fn downgrade(&self) -> WeakPre {
        match self {
            Self::P2(pre) => WeakPre::P2(Arc::downgrade(pre)),
            Self::P3(pre) => WeakPre::P3(Arc::downgrade(pre)),
        }
    }
}

/// A [`Pre`] held only while a version holds it.
pub(super) enum WeakPre {
    P2(Weak<ProxyPre<Host>>),
    P3(Weak<ServicePre<Host>>),
}

impl WeakPre {
    pub(super) fn upgrade(&self) -> Option<Pre> {
        match self {
            Self::P2(pre) => pre.upgrade().map(Pre::P2),
            Self::P3(pre) => pre.upgrade().map(Pre::P3),
        }
    }

    pub(super) fn alive(&self) -> bool {
        match self {
            Self::P2(pre) => pre.strong_count() > 0,
            Self::P3(pre) => pre.strong_count() > 0,
        }
    }
}
