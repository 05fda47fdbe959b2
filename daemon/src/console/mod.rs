//! The web console at `/console`: one HTML page, one stylesheet and one JavaScript module,
//! compiled into the binary (`include_str!`), served on the HTTPS listener beside the API.
//!
//! ## Layout
//!
//! - `assets/index.html`: the page: a sign-in form, the operator view, the app-owner view.
//! - `assets/console.css`: its styles.
//! - `assets/console.js`: an ES module, no framework and no build step: it signs in,
//!   calls the documented API with `fetch` (`Authorization: Bearer`), polls, and draws the
//!   charts as inline SVG. Everything it shows comes from the API, so the console can do
//!   nothing a `curl` with the same token could not.
//!
//! ## Security
//!
//! The token lives in one JavaScript variable: never in a cookie, `localStorage`, a URL or
//! a log, so a reload signs out and no request is authenticated by the browser on its own
//! (which is what makes CSRF moot; SECURITY.md says why this was chosen over cookies). The
//! pages hold no secret and need no authentication; the operator's calls reach the admin
//! API, which answers loopback clients only unless `admin_remote`, exactly as for `curl`.
//! Every answer here carries a strict Content-Security-Policy (scripts and styles from
//! these files only: no inline script or style, no `eval`), `nosniff`, no referrer, no
//! framing and `no-store`. The script writes text with `textContent`, never markup.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page.
const INDEX: &str = include_str!("assets/index.html");
/// The stylesheet.
const STYLE: &str = include_str!("assets/console.css");
/// The script (an ES module).
const SCRIPT: &str = include_str!("assets/console.js");

/// The console's Content-Security-Policy: everything from this origin's files only; `data:`
/// images for the empty favicon; no plugins, frames, inline code, `<base>` or foreign
/// form targets.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// Every console path, as (method, path); `tests/console.rs` fetches each and checks its
/// headers.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/console.css"),
    ("GET", "/console/console.js"),
];

/// The console's routes. They have no fallback: an unknown path falls through to the API's
/// JSON `not_found` when merged with it ([`crate::api::service`]).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
}

/// One asset with the console's headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSP forbids inline code, so the page must have none: no `<script>` without
    /// `src`, no `<style>`, no `style=` or `on...=` attributes, and the script builds no
    /// markup from strings.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = INDEX.to_ascii_lowercase();
        for tag in
            page.match_indices("<script").map(|(at, _)| &page[at..at + page[at..].find('>').unwrap_or(0)])
        {
            assert!(tag.contains("src=\"/console/console.js\""), "inline script: {tag}");
        }
        assert!(!page.contains("<style"), "inline <style>");
        assert!(!page.contains(" style="), "style attribute");
        let handlers = page
            .split(|c: char| c.is_whitespace())
            .filter(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handlers.count(), 0, "inline event handlers");
        // Without the script a form would still submit its named fields: none has a name,
        // so a token typed with the script blocked goes nowhere.
        for field in ["<input", "<select", "<textarea"] {
            for (at, _) in page.match_indices(field) {
                let tag = &page[at..at + page[at..].find('>').unwrap_or(0)];
                assert!(!tag.contains(" name="), "a named form field: {tag}");
            }
        }
        for sink in
            ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"]
        {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        for store in ["localStorage", "sessionStorage", "document.cookie", "indexedDB"] {
            assert!(!SCRIPT.contains(store), "console.js keeps something in {store}");
        }
    }
}
