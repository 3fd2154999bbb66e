//! Network peers a test controls: a forwarder to LocalStack it can cut or slow
//! ([`Proxy`]), an EC2 proxy that breaks chosen calls ([`FaultProxy`]), an HTTP server with
//! scripted answers ([`ScriptedHttp`]), and the HTTP/1.1 reading and forwarding they share.

mod fault;
mod http;
mod proxy;
mod scripted;

pub use fault::FaultProxy;
pub use http::{forward_closing, read_request};
pub use proxy::Proxy;
pub use scripted::{Answer, ScriptedHttp};
