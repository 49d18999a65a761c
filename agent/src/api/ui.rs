//! The dashboard at `/ui/`: static files compiled into the binary (`agent/ui/`), plain JavaScript
//! that reads the same JSON endpoints as the CLI and follows the event stream (SSE). uPlot, the
//! plotting library, is vendored as its released minified file (`agent/ui/vendor/`), so building
//! augur needs neither npm nor a build step.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's own scripts,
//! styles and connections: no inline script, no external request, no framing.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The policy every dashboard answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The files, by name under `/ui/`: contents and content type.
const FILES: &[(&str, &[u8], &str)] = &[
    (
        "index.html",
        include_bytes!("../../ui/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "app.js",
        include_bytes!("../../ui/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_bytes!("../../ui/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "uPlot.iife.min.js",
        include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "uPlot.min.css",
        include_bytes!("../../ui/vendor/uPlot.min.css"),
        "text/css; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_bytes!("../../ui/favicon.svg"),
        "image/svg+xml",
    ),
];

fn file(name: &str) -> Response {
    let Some((_, body, content_type)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            )],
            "no such dashboard file; the dashboard is at /ui/",
        )
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // The files change only with the binary; a restarted agent may be a new one.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        *body,
    )
        .into_response()
}

/// `GET /ui`: to `/ui/`, so the page's relative paths resolve.
pub async fn root_redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`.
pub async fn index() -> Response {
    file("index.html")
}

/// `GET /ui/{file}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_the_policy_and_its_type() {
        for (name, body, content_type) in FILES {
            assert!(!body.is_empty(), "{name}");
            let r = file(name);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], *content_type);
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        }
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_external_reference() {
        let html = std::str::from_utf8(FILES[0].1).expect("utf-8");
        // Every script has a src; no inline handlers or style attributes.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script src=").count()
        );
        for banned in [
            " onclick=",
            " onload=",
            " style=",
            "javascript:",
            "http://",
            "https://",
        ] {
            assert!(!html.contains(banned), "index.html contains {banned:?}");
        }
        let js = std::str::from_utf8(FILES[1].1).expect("utf-8");
        for banned in ["http://", "https://", "eval(", "innerHTML", "new Function"] {
            assert!(!js.contains(banned), "app.js contains {banned:?}");
        }
    }
}
