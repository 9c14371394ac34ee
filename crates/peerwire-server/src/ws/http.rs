//! The HTTP/1.1 request head on the WebSocket port, parsed with `httparse` and bounded
//! ([`MAX_HEAD`]), and the few responses the server writes.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{SUBPROTOCOL, TOKEN_PREFIX, WS_PATH};

/// Most bytes of a request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Most headers of a request.
const MAX_HEADERS: usize = 32;

/// Why a request head was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("request head over {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("closed before the request head was complete")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request head: what the server looks at, as owned strings.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// `(lowercased name, value)`; values that are not UTF-8 are kept empty.
    pub(crate) headers: Vec<(String, String)>,
}

impl Request {
    /// The values of header `name` (lowercase).
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one value of header `name`; `None` if absent or repeated.
    pub(crate) fn one<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut it = self.all(name);
        let v = it.next()?;
        it.next().is_none().then_some(v)
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether this asks for a WebSocket upgrade (`Upgrade: websocket`, `Connection: upgrade`).
    pub(crate) fn wants_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") && self.has_token("connection", "upgrade")
    }

    /// The upgrade's key, if the request is a well-formed version 13 upgrade to [`WS_PATH`].
    pub(crate) fn upgrade_key(&self) -> Result<&str, &'static str> {
        if self.path != WS_PATH {
            return Err("WebSocket upgrade on another path");
        }
        if self.one("sec-websocket-version") != Some("13") {
            return Err("Sec-WebSocket-Version is not 13");
        }
        match self.one("sec-websocket-key") {
            Some(k) if k.len() == 24 && k.ends_with("==") => Ok(k),
            _ => Err("missing or malformed Sec-WebSocket-Key"),
        }
    }

    /// The session token offered in `Sec-WebSocket-Protocol` (`peerwire.v1,
    /// peerwire.token.<token>`): exactly one token and [`SUBPROTOCOL`] among the offers.
    pub(crate) fn token(&self) -> Result<&str, &'static str> {
        let offers: Vec<&str> = self
            .all("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if !offers.contains(&SUBPROTOCOL) {
            return Err("the subprotocol peerwire.v1 is not offered");
        }
        let mut tokens = offers.iter().filter_map(|o| o.strip_prefix(TOKEN_PREFIX));
        match (tokens.next(), tokens.next()) {
            (Some(t), None) if !t.is_empty() => Ok(t),
            (None, _) => {
                Err("no session token offered (Sec-WebSocket-Protocol: peerwire.token.<token>)")
            }
            _ => Err("more than one session token offered"),
        }
    }
}

/// Parses the request head at the start of `buf`: the request and the head's length once it is
/// complete, `None` while it is not.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if req.version != Some(1) {
                return Err(HeadError::Malformed("not HTTP/1.1".into()));
            }
            let parsed = Request {
                method: req.method.unwrap_or_default().to_owned(),
                path: req.path.unwrap_or_default().to_owned(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            std::str::from_utf8(h.value).unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((parsed, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Reads a request head from `rd` into `buf` (at most [`MAX_HEAD`] bytes), parses it, and
/// leaves in `buf` what followed it.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Request, HeadError> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((req, n)) = parse_head(buf)? {
            buf.drain(..n);
            return Ok(req);
        }
        let want = chunk.len().min(MAX_HEAD - buf.len());
        let n = rd.read(chunk.get_mut(..want).unwrap_or_default()).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The headers every response carries.
const COMMON: &str = "Content-Security-Policy: default-src 'self'; connect-src 'self'\r\n\
X-Content-Type-Options: nosniff\r\n\
Cache-Control: no-store\r\n\
Referrer-Policy: no-referrer\r\n";

/// A complete response that closes the connection: `status` line, a text body.
pub(crate) fn error_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\n{COMMON}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A file of the web root (`body` None for HEAD).
pub(crate) fn file_response(content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\n{COMMON}Content-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The upgrade's answer: 101, the accept key, the one subprotocol.
pub(crate) fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn parse(head: &[u8]) -> Result<Request, HeadError> {
        let mut rd = head;
        let mut buf = vec![];
        read_head(&mut rd, &mut buf).await
    }

    #[tokio::test]
    async fn heads_are_bounded_and_tokens_come_from_the_subprotocol() {
        let req = parse(
            b"GET /peerwire HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: peerwire.v1, peerwire.token.pw1.abc\r\nOrigin: https://a\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(req.wants_upgrade());
        assert_eq!(req.upgrade_key().unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.token().unwrap(), "pw1.abc");
        assert_eq!(req.one("origin"), Some("https://a"));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(big.as_bytes()).await,
            Err(HeadError::TooLarge)
        ));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(many.as_bytes()).await,
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n").await,
            Err(HeadError::Closed)
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        // The accept key of RFC 6455's example.
        let r = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(r.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{r}");
    }
}
