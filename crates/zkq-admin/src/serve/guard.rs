//! What keeps other web sites out of the dashboard.
//!
//! - **Cross-site requests** (CSRF): every action form carries a token drawn at start, which a
//!   page from another origin cannot read; a POST without it is refused. A POST whose `Origin`
//!   is another site, or that the browser marks as cross-site, is refused too.
//! - **DNS rebinding**: a hostile page can point its own name at 127.0.0.1 and then read the
//!   dashboard as if it were its own origin (token included). So the dashboard answers only to
//!   IP addresses, `localhost`, and the names given with `--host`.
//! - **Injection**: every value is escaped in HTML (maud), and the Content-Security-Policy
//!   allows only the dashboard's own script and stylesheet.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Shared;

#[derive(Debug)]
pub struct Guard {
    token: String,
    hosts: Vec<String>,
}

impl Guard {
    pub fn new(hosts: Vec<String>) -> Guard {
        let bytes: [u8; 32] = rand::random();
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Guard {
            token,
            hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// The token every action form carries.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether a request's `Host` header names this dashboard.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok() || self.hosts.contains(&name)
    }

    /// Why a POST must be refused, if it must: a missing or wrong token, another site's origin.
    pub fn refuse_post(&self, headers: &HeaderMap, token: &str) -> Option<&'static str> {
        if !same_bytes(token.as_bytes(), self.token.as_bytes()) {
            return Some("the form's token is missing or stale: reload the page and try again");
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return Some("a request from another site is refused");
        }
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
            // A proxy may send its own Host (nginx's default): the --host names are ours too.
            let ours = origin_host.eq_ignore_ascii_case(host)
                || self.hosts.contains(&host_name(origin_host).to_ascii_lowercase());
            if origin == "null" || !ours {
                return Some("a request from another origin is refused");
            }
        }
        None
    }
}

/// The name in a `Host` header, without its port; an IPv6 address without its brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Compares in time that does not depend on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests for a host name the dashboard does not answer to.
pub async fn check_host(State(dashboard): State<Shared>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !dashboard.guard.host_allowed(host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "zkq dashboard: unknown host name; add it with --host NAME if a proxy serves the dashboard under it\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Headers on every response: only the dashboard's own script and styles, no framing.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_localhost_and_given_names_are_answered() {
        let guard = Guard::new(vec!["Queue.Example.com".into()]);
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "10.0.0.5",
            "queue.example.com",
        ] {
            assert!(guard.host_allowed(host), "{host}");
        }
        for host in ["evil.example:8080", "", "127.0.0.1.evil.example"] {
            assert!(!guard.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn a_post_needs_the_token_and_this_origin() {
        let guard = Guard::new(Vec::new());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(guard.refuse_post(&headers, guard.token()).is_none());
        assert!(guard.refuse_post(&headers, "").is_some());
        assert!(guard.refuse_post(&headers, &"0".repeat(64)).is_some());

        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(guard.refuse_post(&headers, guard.token()).is_none());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(guard.refuse_post(&headers, guard.token()).is_some());

        // Behind a proxy that sends its own Host, the origin is one of the --host names.
        let proxied = Guard::new(vec!["queue.example.com".into()]);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://queue.example.com"),
        );
        assert!(proxied.refuse_post(&headers, proxied.token()).is_none());
        assert!(guard.refuse_post(&headers, guard.token()).is_some());

        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(guard.refuse_post(&headers, guard.token()).is_some());
    }
}
