//! Wire-level tests of the MongoDB source against a MongoDB protocol test double
//! (`tests/support/mongo_double.py`, built on PyPI's `mockupdb`, MongoDB's own driver-testing
//! server). The real driver handshakes over OP_MSG, sends real commands and parses real replies;
//! the double logs every command it receives, and these tests assert on that log.
//!
//! Needs `python3 -m pip install mockupdb` (pymongo comes with it; `scripts/install-deps`
//! installs it). Without it the tests fail and say why. `OPSKIT_TEST_PYTHON` picks another
//! interpreter.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bson::{Bson, RawDocumentBuf, doc};
use opskit_archive::bounds::MonthBounds;
use opskit_archive::source::mongodb::{
    MongoSource, MongoSourceOptions, WELL_FORMED_DATE_PATTERN, anomaly_filters,
};
use opskit_archive::source::{
    ArchivedDoc, DeleteOutcome, DeleteTimedOut, Record, RecordSink, Source,
};
use serde_json::{Value, json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mongo_double.py");

fn python() -> String {
    std::env::var("OPSKIT_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A running double; killed and reaped on drop.
struct Double {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile_dir::Dir,
}

/// A tiny temp dir (the crate's dev-dependencies are not ours to change).
mod tempfile_dir {
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p =
                std::env::temp_dir().join(format!("opskit-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the double stops when its stdin closes
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the double; panics (naming what to install) when mockupdb is not installed.
fn start(scenario: &str) -> Double {
    let probe = Command::new(python())
        .args(["-c", "import mockupdb, bson"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let missing = match probe {
        Err(e) => Some(format!("cannot run {}: {e}", python())),
        Ok(out) if !out.status.success() => Some(format!(
            "{} cannot import mockupdb: {}",
            python(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        Ok(_) => None,
    };
    if let Some(why) = missing {
        // A test the machine cannot run fails; it never passes as skipped.
        panic!("{why}; scripts/install-deps installs it (python3 -m pip install mockupdb)");
    }
    let dir = tempfile_dir::Dir::new("mongo-double");
    let log = dir.path().join("requests.jsonl");
    let mut child = Command::new(python())
        .arg(SCRIPT)
        .arg(&log)
        .arg(scenario)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the MongoDB test double");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the double printed its port within 30 s");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("unexpected first line from the double: {line:?}"))
        .parse()
        .unwrap();
    Double {
        child,
        port,
        log,
        _dir: dir,
    }
}

impl Double {
    fn source(&self, options: MongoSourceOptions) -> MongoSource {
        MongoSource::connect(
            &format!("mongodb://localhost:{}/?directConnection=true", self.port),
            None,
            "test",
            "user_logs",
            "create_on",
            options,
        )
        .expect("connect to the double")
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The commands received, in order.
    fn requests(&self) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter_map(|e| e.get("request").cloned())
            .collect()
    }

    /// The only command received named `name` (first key).
    fn only(&self, name: &str) -> Value {
        let found: Vec<Value> = self
            .requests()
            .into_iter()
            .filter(|r| first_key(r) == name)
            .collect();
        assert_eq!(found.len(), 1, "expected one `{name}`, got {found:#?}");
        found.into_iter().next().unwrap()
    }

    /// The exact bytes of the documents the double serves, in order.
    fn served(&self) -> Vec<Vec<u8>> {
        self.entries()
            .into_iter()
            .filter_map(|e| e.get("served").and_then(Value::as_str).map(unhex))
            .collect()
    }
}

fn first_key(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A document in canonical Extended JSON, as the double logs it.
fn ext(d: bson::Document) -> Value {
    Bson::Document(d).into_canonical_extjson()
}

fn int32(n: i32) -> Value {
    json!({"$numberInt": n.to_string()})
}

/// The value of a canonical Extended JSON integer, whatever its width.
fn num(v: &Value) -> i64 {
    let text = v
        .get("$numberInt")
        .or_else(|| v.get("$numberLong"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("not an integer: {v}"));
    text.parse().unwrap()
}

fn january() -> MonthBounds {
    MonthBounds::new("2024-01".parse().unwrap(), "Asia/Shanghai".parse().unwrap()).unwrap()
}

fn fast() -> MongoSourceOptions {
    MongoSourceOptions {
        batch_size: 2,
        command_timeout: Duration::from_secs(10),
        scan_timeout: Duration::from_secs(10),
        batch_timeout: Duration::from_secs(10),
        delete_timeout: Duration::from_secs(60),
    }
}

#[derive(Default)]
struct Collected {
    ids: Vec<Bson>,
    dates: Vec<String>,
    raw: Vec<Vec<u8>>,
}

impl RecordSink for Collected {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        self.ids.push(record.id.clone());
        self.dates.push(record.date.to_string());
        self.raw.push(record.raw.to_vec());
        Ok(())
    }
}

#[test]
fn export_sends_a_hinted_sorted_find_then_getmore_and_keeps_the_server_bytes() {
    let double = start("archive");
    let mut source = double.source(fast());
    source.ping().unwrap();
    let stats = source.range_stats(&january()).unwrap();
    assert_eq!(stats.count, 5);
    assert_eq!(stats.avg_record_bytes, Some(200));
    assert_eq!(stats.index.as_deref(), Some("create_on_1"));

    let mut sink = Collected::default();
    source.export(&january(), &mut sink).unwrap();

    // Byte-identical: what the server sent is what the archive gets.
    let served = double.served();
    assert_eq!(served.len(), 5);
    assert_eq!(sink.raw, served);
    let expected_ids: Vec<Bson> = served
        .iter()
        .map(|b| {
            let d = RawDocumentBuf::from_bytes(b.clone()).unwrap();
            Bson::try_from(d.get("_id").unwrap().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(sink.ids, expected_ids);
    assert_eq!(sink.dates[0], "2024-01-01 00:00:00");
    assert_eq!(sink.dates[4], "2024-01-31 23:59:59");

    let find = double.only("find");
    assert_eq!(find["find"], "user_logs");
    assert_eq!(find["$db"], "test");
    assert_eq!(
        find["filter"],
        ext(doc! {"create_on": {
            "$gte": "2024-01-01 00:00:00",
            "$lt": "2024-02-01 00:00:00",
            "$regex": WELL_FORMED_DATE_PATTERN,
        }})
    );
    assert_eq!(find["hint"], "create_on_1");
    assert_eq!(find["sort"], json!({"create_on": int32(1)}));
    assert_eq!(find["collation"], json!({"locale": "simple"}));
    assert_eq!(find["batchSize"], int32(2));
    assert_eq!(find["noCursorTimeout"], true);
    assert!(find.get("limit").is_none() && find.get("maxTimeMS").is_none());

    let get_more = double.only("getMore");
    assert_eq!(get_more["getMore"], json!({"$numberLong": "1234"}));
    assert_eq!(get_more["collection"], "user_logs");
    assert_eq!(get_more["batchSize"], int32(2));

    let count = double.only("aggregate");
    assert_eq!(count["hint"], "create_on_1");
    assert_eq!(count["collation"], json!({"locale": "simple"}));
    assert_eq!(
        count["pipeline"][0]["$match"],
        ext(doc! {"create_on": {
            "$gte": "2024-01-01 00:00:00",
            "$lt": "2024-02-01 00:00:00",
            "$regex": WELL_FORMED_DATE_PATTERN,
        }})
    );
    assert_eq!(double.only("collStats")["collStats"], "user_logs");
    assert_eq!(double.only("listIndexes")["listIndexes"], "user_logs");
}

#[test]
fn anomalies_send_each_filter_through_the_date_index() {
    let double = start("archive");
    let mut source = double.source(fast());
    let anomalies = source.anomalies().unwrap();
    // The double answers every count with 5 and every example query with nothing.
    assert_eq!(
        (anomalies.missing, anomalies.wrong_type, anomalies.malformed),
        (5, 5, 5)
    );
    let counts: Vec<Value> = double
        .requests()
        .into_iter()
        .filter(|r| first_key(r) == "aggregate")
        .collect();
    let expected: Vec<Value> = anomaly_filters("create_on")
        .into_iter()
        .map(|(_, f)| ext(f))
        .collect();
    let sent: Vec<Value> = counts
        .iter()
        .map(|c| c["pipeline"][0]["$match"].clone())
        .collect();
    assert_eq!(sent, expected);
    assert!(counts.iter().all(|c| c["hint"] == "create_on_1"));
    let examples: Vec<Value> = double
        .requests()
        .into_iter()
        .filter(|r| first_key(r) == "find")
        .collect();
    assert_eq!(examples.len(), 3);
    for e in &examples {
        assert_eq!(e["projection"], json!({"_id": int32(1)}));
        assert_eq!(num(&e["limit"]), 3);
        assert_eq!(e["hint"], "create_on_1");
    }
}

#[test]
fn delete_sends_each_archived_document_with_majority_write_concern_and_counts_what_stayed() {
    let double = start("archive");
    let mut source = double.source(fast());
    let a = bson::oid::ObjectId::parse_str("659200800000000000000001").unwrap();
    let docs: Vec<ArchivedDoc> = [
        (Bson::ObjectId(a), "2024-01-01 00:00:00"),
        (Bson::Int64(3), "2024-01-15 12:30:00"),
        (Bson::String("text-id".into()), "2024-01-31 23:59:59"),
    ]
    .into_iter()
    .map(|(id, date)| ArchivedDoc {
        raw: bson::RawDocumentBuf::from_document(&doc! {"_id": id.clone(), "create_on": date})
            .unwrap(),
        id,
        fingerprint: None,
    })
    .collect();
    // The double deletes all but the first document, then reports the first as still there.
    assert_eq!(
        source.delete_archived(&docs, &january()).unwrap(),
        DeleteOutcome {
            deleted: 2,
            changed: 1,
            gone: 0
        }
    );
    assert_eq!(
        source.delete_archived(&[], &january()).unwrap(),
        DeleteOutcome::default()
    );

    let delete = double.only("delete");
    assert_eq!(delete["delete"], "user_logs");
    assert_eq!(delete["ordered"], false);
    assert_eq!(delete["writeConcern"]["w"], "majority");
    assert_eq!(num(&delete["writeConcern"]["wtimeout"]), 60_000);
    let statements = delete["deletes"].as_array().unwrap();
    assert_eq!(statements.len(), 3, "one statement per archived document");
    let first = &statements[0];
    assert_eq!(
        first["q"],
        ext(doc! {
            "_id": a,
            "create_on": {"$gte": "2024-01-01 00:00:00", "$lt": "2024-02-01 00:00:00"},
            "$expr": {"$eq": ["$$ROOT", {"$literal": {"_id": a, "create_on": "2024-01-01 00:00:00"}}]},
        })
    );
    assert_eq!(num(&first["limit"]), 1);
    assert_eq!(first["collation"], json!({"locale": "simple"}));
    let look = double
        .requests()
        .into_iter()
        .find(|r| first_key(r) == "find" && r["filter"]["_id"].get("$in").is_some())
        .expect("the look-up of the documents kept");
    assert_eq!(look["projection"], json!({"_id": int32(1)}));

    // A standalone has no replicas: no lag, not an error.
    assert_eq!(source.replication_lag().unwrap(), None);
    assert_eq!(double.only("replSetGetStatus")["$db"], "admin");
}

#[test]
fn replication_lag_is_read_from_repl_set_get_status() {
    let double = start("replset");
    let mut source = double.source(fast());
    // b is 2.5 s behind; c is 7 s behind but a delayed member, so it does not count.
    assert_eq!(source.replication_lag().unwrap(), Some(2.5));
    assert_eq!(double.only("replSetGetConfig")["$db"], "admin");
}

#[test]
fn a_collection_without_a_date_index_is_refused() {
    let double = start("no_index");
    let mut source = double.source(fast());
    // It answers and the collection exists (a restore could proceed)...
    source.ping().unwrap();
    // ...but no range query runs without the index.
    let err = format!("{:#}", source.range_stats(&january()).unwrap_err());
    assert!(err.contains("createIndex({create_on: 1})"), "{err}");
    assert!(err.contains("/test.user_logs: no usable index"), "{err}");
    let err = format!(
        "{:#}",
        source
            .export(&january(), &mut Collected::default())
            .unwrap_err()
    );
    assert!(err.contains("no usable index"), "{err}");
    assert!(source.anomalies().is_err());
    let sent: Vec<String> = double.requests().iter().map(first_key).collect();
    assert!(
        sent.iter().all(|c| c != "find" && c != "aggregate"),
        "no unhinted scan may be sent: {sent:?}"
    );
}

#[test]
fn a_missing_collection_is_named() {
    let double = start("no_collection");
    let mut source = double.source(fast());
    let err = format!("{:#}", source.ping().unwrap_err());
    assert!(err.contains("the collection does not exist"), "{err}");
    assert!(err.contains("/test.user_logs"), "{err}");
}

#[test]
fn a_stalled_get_more_times_out_instead_of_hanging() {
    let double = start("stall_getmore");
    let mut source = double.source(MongoSourceOptions {
        batch_timeout: Duration::from_secs(2),
        ..fast()
    });
    let mut sink = Collected::default();
    let started = Instant::now();
    let err = format!("{:#}", source.export(&january(), &mut sink).unwrap_err());
    assert!(err.contains("batch 2 did not arrive within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(sink.raw.len(), 2, "the first batch was delivered");
}

#[test]
fn the_driver_handshakes_and_talks_op_msg_only() {
    let double = start("archive");
    let mut source = double.source(fast());
    source.ping().unwrap();
    let entries: Vec<Value> = double
        .entries()
        .into_iter()
        .filter(|e| e.get("request").is_some())
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| matches!(first_key(&e["request"]).as_str(), "hello" | "isMaster")),
        "the driver handshook with the double: {entries:#?}"
    );
    assert!(entries.iter().any(|e| first_key(&e["request"]) == "ping"));
    // 2013 is OP_MSG; the legacy OP_QUERY (2004) must not appear.
    assert!(entries.iter().all(|e| e["opcode"] == 2013), "{entries:#?}");
}

#[test]
fn restore_inserts_the_archived_bytes_unordered_and_counts_duplicates_as_present() {
    let double = start("archive");
    let mut source = double.source(fast());
    let served = double.served();
    let docs: Vec<RawDocumentBuf> = served
        .iter()
        .map(|b| RawDocumentBuf::from_bytes(b.clone()).unwrap())
        .collect();
    let refs: Vec<&bson::RawDocument> = docs.iter().map(|d| d.as_ref()).collect();
    assert_eq!(source.insert_documents(&refs).unwrap(), 4);

    let insert = double.only("insert");
    assert_eq!(insert["insert"], "user_logs");
    assert_eq!(insert["ordered"], false);
    assert_eq!(insert["writeConcern"]["w"], "majority");
    // The documents went out as archived: compare them as canonical Extended JSON.
    let expected: Vec<Value> = docs
        .iter()
        .map(|d| ext(bson::Document::try_from(d.as_ref()).unwrap()))
        .collect();
    assert_eq!(insert["documents"], Value::Array(expected));
}

#[test]
fn a_delete_without_an_answer_is_a_typed_time_out_and_the_retry_is_answered() {
    let double = start("stall_delete");
    let mut source = double.source(MongoSourceOptions {
        delete_timeout: Duration::from_secs(1),
        ..fast()
    });
    let docs: Vec<ArchivedDoc> = (1..=3_i64)
        .map(|n| ArchivedDoc {
            id: Bson::Int64(n),
            raw: bson::RawDocumentBuf::from_document(
                &doc! {"_id": n, "create_on": "2024-01-02 00:00:00"},
            )
            .unwrap(),
            fingerprint: None,
        })
        .collect();
    let started = Instant::now();
    let err = source.delete_archived(&docs, &january()).unwrap_err();
    let timed_out = DeleteTimedOut::find(&err).unwrap_or_else(|| panic!("untyped: {err:#}"));
    assert_eq!(timed_out.documents, 3);
    // 1 s plus as much slack for the server's own time-out.
    assert_eq!(timed_out.limit, Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(10));
    // Deleting by id is idempotent: the purge re-sends the batch (smaller); the server answers.
    let o = source.delete_archived(&docs[..2], &january()).unwrap();
    assert_eq!(o.total(), 2);
}

/// Fails on the third record, like a full disk would.
struct FailingSink(usize);

impl RecordSink for FailingSink {
    fn accept(&mut self, _record: Record<'_>) -> anyhow::Result<()> {
        self.0 += 1;
        anyhow::ensure!(self.0 < 3, "disk full (test)");
        Ok(())
    }
}

#[test]
fn a_failed_export_kills_its_server_cursor() {
    let double = start("endless");
    let mut source = double.source(fast());
    let err = format!(
        "{:#}",
        source.export(&january(), &mut FailingSink(0)).unwrap_err()
    );
    assert!(err.contains("disk full (test)"), "{err}");
    // Dropping the source lets the driver clean up: the noCursorTimeout cursor is killed.
    drop(source);
    let kill = double.only("killCursors");
    assert_eq!(kill["killCursors"], "user_logs");
    assert_eq!(kill["cursors"], json!([{"$numberLong": "1234"}]));
}
