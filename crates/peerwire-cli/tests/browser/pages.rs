//! A second web server for the refusal tests: it serves a copy of the web client from another
//! origin (another port, over HTTPS or plain HTTP), pointed at the real server's endpoint.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

/// A static file server on 127.0.0.1, in a thread, for as long as the process lives.
pub struct Pages {
    pub addr: SocketAddr,
    pub origin: String,
}

impl Pages {
    /// Serves the files of `www`, with `index.html` told to connect to `endpoint`; over TLS with
    /// the identity's server certificate when `identity` is given, else plain HTTP.
    pub fn start(www: &Path, endpoint: &str, identity: Option<&Path>) -> Self {
        let mut files = HashMap::new();
        for entry in walk(www) {
            let rel = entry
                .strip_prefix(www)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            files.insert(format!("/{rel}"), std::fs::read(&entry).unwrap());
        }
        // Another site's copy: without the page's own policy (connect only to its own origin),
        // and pointed at `endpoint`.
        let index = String::from_utf8(files["/index.html"].clone())
            .unwrap()
            .replace("http-equiv=\"Content-Security-Policy\"", "name=\"removed\"")
            .replace(
                "<title>",
                &format!("<meta name=\"peerwire-endpoint\" content=\"{endpoint}\">\n<title>"),
            );
        files.insert("/".into(), index.into_bytes());
        let files = Arc::new(files);
        let tls = identity.map(|dir| {
            let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).unwrap();
            b.set_private_key_file(dir.join("server/key.pem"), SslFiletype::PEM)
                .unwrap();
            b.set_certificate_chain_file(dir.join("server/cert.pem"))
                .unwrap();
            Arc::new(b.build())
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = files.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream) {
                                serve(s, &files);
                            }
                        }
                        None => serve(stream, &files),
                    };
                });
            }
        });
        Self {
            addr,
            origin: format!("{scheme}://{addr}"),
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Answers GET requests on one connection until it closes.
fn serve<S: std::io::Read + Write>(stream: S, files: &HashMap<String, Vec<u8>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let response = match files.get(path) {
            Some(body) => {
                let ty = match path.rsplit_once('.').map(|(_, e)| e) {
                    Some("js") => "text/javascript",
                    Some("css") => "text/css",
                    Some("json") => "application/json",
                    _ => "text/html; charset=utf-8",
                };
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            }
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        let stream = reader.get_mut();
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

/// A free port on 127.0.0.1 (bound and released: the server about to start takes it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
