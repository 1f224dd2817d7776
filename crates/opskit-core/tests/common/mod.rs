//! Shared by the engine tests: a plan whose steps leave traces on disk, and a real HTTP
//! listener that records webhook POSTs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opskit_core::plan::StepContext;
use opskit_core::plan::{Plan, StepAction, StepError, StepResult, StepSpec};

/// A step that appends its id to `<dir>/trace` on start and on undo, optionally blocks while
/// `<dir>/block-<id>` exists, and fails when told to.
pub struct TraceStep {
    pub dir: PathBuf,
    pub id: String,
    pub fail: bool,
    pub refuse: bool,
}

pub fn trace(dir: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("trace"))
        .unwrap();
    writeln!(f, "{line}").unwrap();
    f.sync_all().unwrap();
}

pub fn read_trace(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("trace"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

impl StepAction for TraceStep {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        if self.refuse {
            return Err(StepError::refused(format!("{} says no", self.id)));
        }
        Ok(())
    }
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        trace(&self.dir, &format!("run {}", self.id));
        while self.dir.join(format!("block-{}", self.id)).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.fail {
            return Err(StepError::Failed(anyhow::anyhow!("{} broke", self.id)));
        }
        cx.record("by", &self.id);
        cx.count("steps", 1.0);
        Ok(())
    }
    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        trace(&self.dir, &format!("undo {}", self.id));
        Ok(())
    }
}

/// Steps `ids`; `fail` and `refuse` name steps that fail or refuse; `ponr` the point of no return.
pub fn trace_plan(dir: &Path, ids: &[&str], fail: &str, refuse: &str, ponr: &str) -> Plan {
    let mut plan = Plan::new("demo", "demo-run", "a traced demo plan");
    for id in ids {
        let mut spec = StepSpec::new(*id, format!("step {id}"))
            .command(format!("echo {id}"))
            .undo(vec![format!("echo undo {id}")]);
        if *id == ponr {
            spec = spec.point_of_no_return();
        }
        plan.step(
            spec,
            TraceStep {
                dir: dir.to_path_buf(),
                id: id.to_string(),
                fail: *id == fail,
                refuse: *id == refuse,
            },
        );
    }
    plan
}

/// A real HTTP/1.1 listener on 127.0.0.1 that answers the given statuses in turn (the last
/// one repeats) and keeps every request body.
pub struct Webhook {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<String>>>,
}

pub fn webhook(statuses: Vec<u16>) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhook/mongodb", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            seen.lock().unwrap().push(String::from_utf8(body).unwrap());
            let status = statuses[n.min(statuses.len() - 1)];
            n += 1;
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    Webhook { url, bodies }
}
