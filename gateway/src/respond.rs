//! Responses the gateway writes itself (errors, redirects, CORS preflights, identity pages),
//! written as plain headers so HTTP/1.1 keep-alive survives (pingora's `respond_error` closes the
//! connection).

use http::{HeaderName, HeaderValue, header};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Writes a bodiless response. `close` ends the connection afterwards (framing errors).
pub async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    close: bool,
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 2))?;
    response.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    for (name, value) in headers {
        response.append_header(name.clone(), value.clone())?;
    }
    if close {
        response.insert_header(header::CONNECTION, HeaderValue::from_static("close"))?;
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(response), true)
        .await
}

/// Writes a complete response with a body (pages the gateway serves itself, such as the
/// identity layer's login, 403 and 503 pages). A HEAD request gets the headers only.
pub async fn respond_with_body(
    session: &mut Session,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    body: bytes::Bytes,
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 1))?;
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    for (name, value) in headers {
        response.append_header(name.clone(), value.clone())?;
    }
    let headers_only = body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(response), headers_only)
        .await?;
    if !headers_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
