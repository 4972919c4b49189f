//! A scripted HTTP/1.1 server on 127.0.0.1 for the remote backends' wire tests: each
//! connection gets the next scripted reply and is then closed (`connection: close`, so
//! the client never reuses it); every request is recorded for shape assertions. Only
//! loopback addresses are ever contacted.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    /// The body as sent, for what a `Value` loses (the order of keys).
    pub raw: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers to one connection.
pub enum Reply {
    /// Status, extra headers, body text.
    Http(u16, Vec<(&'static str, String)>, String),
    /// Read the request, then answer nothing until the client gives up and closes.
    Hang,
}

pub fn json(status: u16, body: serde_json::Value) -> Reply {
    Reply::Http(status, Vec::new(), body.to_string())
}

pub struct Server {
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `script` in order, one reply per connection, then stop accepting.
    pub fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handle = std::thread::spawn(move || {
            for reply in script {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                serve(stream, reply, &log);
            }
        });
        Self {
            base_url,
            seen,
            handle: Some(handle),
        }
    }

    /// Requests received so far (waits for the script's thread when it has finished).
    pub fn seen(&mut self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until every scripted reply has been served, then return all requests.
    pub fn finish(mut self) -> Vec<Seen> {
        if let Some(h) = self.handle.take() {
            h.join().expect("server thread");
        }
        self.seen()
    }
}

fn serve(stream: TcpStream, reply: Reply, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let raw = String::from_utf8_lossy(&body).into_owned();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    log.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body,
        raw,
    });
    let mut stream = stream;
    match reply {
        Reply::Http(status, extra, text) => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                text.len()
            );
            for (k, v) in extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(text.as_bytes());
        }
        Reply::Hang => {
            // Returns when the client closes the connection after its timeout.
            let mut sink = [0u8; 64];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}
