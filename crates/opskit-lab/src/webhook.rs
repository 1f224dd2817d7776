//! The lab's alert webhook receiver: a tiny HTTP/1.1 server that appends every POST body as
//! one JSON line to a file and answers 200, so drills can show that alerts arrive.
//!
//! It runs as `opskit lab webhook-receiver --dir <lab> --port <port>` (see
//! [`crate::components::webhook`]). Bodies that are not JSON are stored as a JSON string.

use std::fs::OpenOptions;
use std::io::{BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Where the receiver writes, relative to the lab directory.
pub const RECEIVED_FILE: &str = "webhook/received.jsonl";
/// The path alerts are posted to (any path is accepted).
pub const PATH: &str = "/webhook";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Serves forever on `listener`, appending POST bodies to `out`.
pub fn serve(listener: TcpListener, out: PathBuf) -> Result<()> {
    serve_until(listener, out, &AtomicBool::new(false))
}

fn serve_until(listener: TcpListener, out: PathBuf, stop: &AtomicBool) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock = Arc::new(Mutex::new(out));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let lock = Arc::clone(&lock);
        std::thread::spawn(move || {
            if let Err(e) = handle(conn, &lock) {
                eprintln!("webhook receiver: {e:#}");
            }
        });
    }
    Ok(())
}

/// The same receiver on a thread of the calling process, for tests of crates that cannot
/// run the `opskit` binary. It is not a lab server (not in `lab.json`); dropping it stops it.
#[derive(Debug)]
pub struct InProcessReceiver {
    port: u16,
    lab_dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessReceiver {
    /// Listens on a free port of 127.0.0.1, writing to `<lab_dir>/webhook/received.jsonl`.
    pub fn start(lab_dir: &Path) -> Result<InProcessReceiver> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let out = lab_dir.join(RECEIVED_FILE);
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            if let Err(e) = serve_until(listener, out, &flag) {
                eprintln!("webhook receiver: {e:#}");
            }
        });
        Ok(InProcessReceiver {
            port,
            lab_dir: lab_dir.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The URL to post alerts to (`alert.webhook_url`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    /// The bodies received so far.
    pub fn received(&self) -> Result<Vec<serde_json::Value>> {
        received(&self.lab_dir)
    }
}

impl Drop for InProcessReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The JSON lines received so far in a lab (empty when none arrived).
pub fn received(lab_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let p = lab_dir.join(RECEIVED_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", p.display())))
        .collect()
}

struct Request {
    method: String,
    body: Vec<u8>,
    close: bool,
}

fn handle(conn: TcpStream, out: &Mutex<PathBuf>) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    // Keep-alive: serve requests until the client closes.
    while let Some(req) = read_request(&mut reader)? {
        let (status, body) = if req.method == "POST" {
            append(out, &req.body)?;
            ("200 OK", "{\"received\":true}")
        } else {
            ("200 OK", "{\"service\":\"opskit lab webhook receiver\"}")
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if req.close {
                "connection: close\r\n"
            } else {
                ""
            }
        )?;
        writer.flush()?;
        if req.close {
            break;
        }
    }
    Ok(())
}

fn read_request(r: &mut impl std::io::BufRead) -> Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let method = line.split_whitespace().next().unwrap_or("").to_string();
    // HTTP/1.0 closes by default, 1.1 keeps the connection open unless told otherwise.
    let mut close = line.trim_end().ends_with("HTTP/1.0");
    let (mut length, mut chunked, mut head) = (0usize, false, line.len());
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        head += n;
        if n == 0 || head > MAX_HEAD {
            bail!("bad request head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().context("bad content-length")?;
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "connection" {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    let body = if chunked {
        read_chunked(r)?
    } else {
        if length > MAX_BODY {
            bail!("body of {length} bytes is too large");
        }
        let mut b = vec![0; length];
        r.read_exact(&mut b)?;
        b
    };
    Ok(Some(Request {
        method,
        body,
        close,
    }))
}

fn read_chunked(r: &mut impl std::io::BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .context("bad chunk size")?;
        if body.len() + size > MAX_BODY {
            bail!("chunked body is too large");
        }
        if size == 0 {
            // Trailers end with an empty line.
            let mut l = String::new();
            while r.read_line(&mut l)? > 2 {
                l.clear();
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn append(out: &Mutex<PathBuf>, body: &[u8]) -> Result<()> {
    let value = serde_json::from_slice::<serde_json::Value>(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into()));
    let line = serde_json::to_string(&value).expect("json") + "\n";
    let path = out.lock().unwrap_or_else(|p| p.into_inner());
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&*path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_receiver_records_posts() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let rx = InProcessReceiver::start(dir.path()).unwrap();
        let port: u16 = rx
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for body in ["{\"n\":1}", "not json"] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let got = rx.received().unwrap();
        assert_eq!(
            got,
            [serde_json::json!({"n": 1}), serde_json::json!("not json")]
        );
        drop(rx);
    }

    #[test]
    fn parses_plain_and_chunked_posts() {
        let raw = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}\
POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), &a.body[..]),
            ("POST", &b"{\"a\":1}"[..])
        );
        let b = read_request(&mut r).unwrap().unwrap();
        assert_eq!(&b.body[..], b"{\"b\":2}");
        assert!(read_request(&mut r).unwrap().is_none());
    }
}
