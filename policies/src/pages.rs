//! Responses the gateway sends itself: small HTML pages for browsers, JSON for API clients.

use http::{HeaderName, HeaderValue, StatusCode};

/// A complete response to send instead of proxying.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Reply {
    fn base(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type),
                ),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body,
        }
    }

    /// An HTML page; `link` is an optional `(href, text)` already known to be safe.
    pub fn page(
        status: StatusCode,
        title: &str,
        message: &str,
        link: Option<(&str, &str)>,
    ) -> Self {
        let link = link
            .map(|(href, text)| format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(text)))
            .unwrap_or_default();
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\
             <h1>{t}</h1><p>{m}</p>{link}<hr><small>torhaus</small></body></html>\n",
            t = escape(title),
            m = escape(message)
        );
        Self::base(status, "text/html; charset=utf-8", body)
    }

    pub fn json(status: StatusCode, error: &str, description: &str) -> Self {
        let body =
            serde_json::json!({ "error": error, "error_description": description }).to_string();
        Self::base(status, "application/json", body)
    }

    pub fn redirect(location: &str) -> Self {
        let mut r = Self::base(
            StatusCode::FOUND,
            "text/plain; charset=utf-8",
            String::new(),
        );
        if let Ok(v) = HeaderValue::from_str(location) {
            r.headers.push((http::header::LOCATION, v));
        }
        r
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn with_cookies(mut self, cookies: &[String]) -> Self {
        for c in cookies {
            if let Ok(v) = HeaderValue::from_str(c) {
                self.headers.push((http::header::SET_COOKIE, v));
            }
        }
        self
    }

    /// The value of the first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_their_text() {
        let r = Reply::page(
            StatusCode::FORBIDDEN,
            "No <b>",
            "a & \"b\"",
            Some(("/x?a=1&b=2", "retry")),
        );
        assert!(r.body.contains("No &lt;b&gt;"));
        assert!(r.body.contains("a &amp; &quot;b&quot;"));
        assert!(r.body.contains("href=\"/x?a=1&amp;b=2\""));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
}
