//! Opt-in test of the MongoDB source against a real MongoDB (no registry here offers one).
//!
//! Ignored by default; run it with `OPSKIT_TEST_MONGODB_URI` set (e.g. `mongodb://localhost:27017/`)
//! and `-- --ignored`; it fails when the variable is missing. The user
//! needs readWrite and createIndex on `OPSKIT_TEST_MONGODB_DB` (default `opskit_test`). A
//! password, if any, is read from `OPSKIT_TEST_MONGODB_PASSWORD_FILE` (mode 0600), never from
//! the URI. The test seeds a fresh collection with string dates of three months plus
//! anomalies, and drops it at the end.

use std::path::PathBuf;
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, doc};
use opskit_archive::bounds::MonthBounds;
use opskit_archive::source::mongodb::{MongoSource, MongoSourceOptions};
use opskit_archive::source::{ArchivedDoc, DeleteOutcome, Record, RecordSink, Source};

struct Target {
    uri: String,
    db: String,
    password_file: Option<PathBuf>,
}

fn target() -> Option<Target> {
    let uri = std::env::var("OPSKIT_TEST_MONGODB_URI")
        .expect("set OPSKIT_TEST_MONGODB_URI to a MongoDB to test against (see the file's docs)");
    Some(Target {
        uri,
        db: std::env::var("OPSKIT_TEST_MONGODB_DB").unwrap_or_else(|_| "opskit_test".into()),
        password_file: std::env::var_os("OPSKIT_TEST_MONGODB_PASSWORD_FILE").map(PathBuf::from),
    })
}

fn month(m: &str) -> MonthBounds {
    MonthBounds::new(m.parse().unwrap(), "Asia/Shanghai".parse().unwrap()).unwrap()
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

/// The seeded documents: December 3, January 5 well-formed + 2 malformed that sort inside
/// January, February 2, and anomalies outside every month.
fn seed() -> Vec<Document> {
    let mut docs = Vec::new();
    let mut n = 0;
    let mut add = |create_on: Option<Bson>| {
        n += 1;
        let mut d = doc! {"_id": n, "msg": format!("log line {n}"), "nested": {"k": [1, 2.5, "x"]}};
        if let Some(v) = create_on {
            d.insert("create_on", v);
        }
        docs.push(d);
    };
    for s in [
        "2023-12-01 00:00:00",
        "2023-12-15 10:00:00",
        "2023-12-31 23:59:59",
    ] {
        add(Some(s.into()));
    }
    for s in [
        "2024-01-01 00:00:00",
        "2024-01-01 00:00:00",
        "2024-01-15 12:00:00",
        "2024-01-31 23:59:59",
        "2024-01-20 08:00:00",
        // Malformed, yet inside January's string range: reported, never exported nor deleted.
        "2024-01-05T03:03:11",
        "2024-01-05 03:03:11.5",
    ] {
        add(Some(s.into()));
    }
    for s in ["2024-02-01 00:00:00", "2024-02-10 00:00:00"] {
        add(Some(s.into()));
    }
    add(None); // missing
    add(Some(Bson::Null));
    add(Some(Bson::DateTime(bson::DateTime::from_millis(
        1_704_067_200_000,
    ))));
    add(Some(Bson::Int64(20240101)));
    add(Some(Bson::Array(vec!["2023-06-01 00:00:00".into()])));
    add(Some("2024-1-5 3:03:11".into())); // malformed, sorts after every month of 2024
    docs
}

#[test]
#[ignore = "needs a real MongoDB: OPSKIT_TEST_MONGODB_URI=... cargo test -p opskit-archive --test mongo_real -- --ignored"]
fn a_month_is_exported_byte_exact_and_only_its_archived_ids_are_deleted() {
    let Some(target) = target() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = format!(
        "user_logs_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // The seeding client uses the same URI and password file.
    let mut options = runtime
        .block_on(async { mongodb::options::ClientOptions::parse(&target.uri).await })
        .unwrap();
    if let Some(file) = &target.password_file {
        let password =
            opskit_core::secret::read_secret_file(file, "OPSKIT_TEST_MONGODB_PASSWORD_FILE")
                .expect("password file")
                .expose()
                .to_string();
        options
            .credential
            .as_mut()
            .expect("URI names the user")
            .password = Some(password);
    }
    options.server_selection_timeout = Some(Duration::from_secs(10));
    let client = {
        let _guard = runtime.enter();
        mongodb::Client::with_options(options).unwrap()
    };
    let coll = client.database(&target.db).collection::<Document>(&name);
    runtime.block_on(async {
        coll.create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"create_on": 1})
                .build(),
        )
        .await
        .unwrap();
        coll.insert_many(seed()).await.unwrap();
    });
    struct DropAtEnd<'a>(&'a tokio::runtime::Runtime, mongodb::Collection<Document>);
    impl Drop for DropAtEnd<'_> {
        fn drop(&mut self) {
            let coll = self.1.clone();
            let _ = self.0.block_on(async move { coll.drop().await });
        }
    }
    let _cleanup = DropAtEnd(&runtime, coll.clone());

    let mut source = MongoSource::connect(
        &target.uri,
        target.password_file.as_deref(),
        &target.db,
        &name,
        "create_on",
        MongoSourceOptions {
            batch_size: 3, // several getMores
            ..MongoSourceOptions::default()
        },
    )
    .unwrap();
    source.ping().unwrap();

    let stats = source.range_stats(&month("2024-01")).unwrap();
    assert_eq!(stats.count, 5, "only well-formed dates count");
    assert_eq!(stats.index.as_deref(), Some("create_on_1"));
    assert!(stats.avg_record_bytes.unwrap_or(0) > 0);

    let anomalies = source.anomalies().unwrap();
    assert_eq!(
        (anomalies.missing, anomalies.wrong_type, anomalies.malformed),
        (2, 3, 3),
        "{anomalies:?}"
    );
    assert!(
        anomalies
            .examples
            .iter()
            .any(|e| e.starts_with("wrong-type: "))
    );

    let mut january = Collected::default();
    source.export(&month("2024-01"), &mut january).unwrap();
    assert_eq!(january.ids.len(), 5);
    let mut sorted = january.dates.clone();
    sorted.sort();
    assert_eq!(january.dates, sorted, "exported in date order");
    // Each record is the server's document byte for byte.
    let raw_coll = coll.clone_with_type::<RawDocumentBuf>();
    for (id, raw) in january.ids.iter().zip(&january.raw) {
        let filter = doc! {"_id": id.clone()};
        let c = raw_coll.clone();
        let stored = runtime
            .block_on(async move { c.find_one(filter).await })
            .unwrap()
            .unwrap();
        assert_eq!(stored.as_bytes(), raw.as_slice(), "document {id}");
    }

    let archived: Vec<ArchivedDoc> = january
        .ids
        .iter()
        .zip(&january.raw)
        .map(|(id, raw)| ArchivedDoc {
            id: id.clone(),
            raw: RawDocumentBuf::from_bytes(raw.clone()).unwrap(),
            fingerprint: None,
        })
        .collect();
    // A document of February is not deleted by January's purge, even when asked.
    let february = runtime
        .block_on({
            let c = raw_coll.clone();
            async move { c.find_one(doc! {"_id": 11}).await }
        })
        .unwrap()
        .unwrap();
    let outcome = source
        .delete_archived(
            &[ArchivedDoc {
                id: Bson::Int32(11),
                raw: february,
                fingerprint: None,
            }],
            &month("2024-01"),
        )
        .unwrap();
    assert_eq!(outcome.deleted, 0);
    // A document changed since the export stays (its new version goes to the next late pass).
    let changed_id = january.ids[1].clone();
    runtime
        .block_on({
            let c = coll.clone();
            let id = changed_id.clone();
            async move {
                c.update_one(
                    doc! {"_id": id},
                    doc! {"$set": {"msg": "edited after the export"}},
                )
                .await
            }
        })
        .unwrap();
    assert_eq!(
        source
            .delete_archived(&archived, &month("2024-01"))
            .unwrap(),
        DeleteOutcome {
            deleted: 4,
            changed: 1,
            gone: 0
        }
    );
    // Re-sending the same documents (a resumed purge) deletes nothing more and is not an error.
    assert_eq!(
        source
            .delete_archived(&archived, &month("2024-01"))
            .unwrap(),
        DeleteOutcome {
            deleted: 0,
            changed: 1,
            gone: 4
        }
    );
    runtime
        .block_on({
            let c = coll.clone();
            async move { c.delete_one(doc! {"_id": changed_id}).await }
        })
        .unwrap();

    assert_eq!(source.range_stats(&month("2024-01")).unwrap().count, 0);
    assert_eq!(source.range_stats(&month("2023-12")).unwrap().count, 3);
    assert_eq!(source.range_stats(&month("2024-02")).unwrap().count, 2);
    let left = runtime
        .block_on(async { coll.count_documents(doc! {}).await })
        .unwrap();
    assert_eq!(left, 18 - 5);
    let malformed_kept = runtime
        .block_on(async {
            coll.count_documents(
                doc! {"create_on": {"$in": ["2024-01-05T03:03:11", "2024-01-05 03:03:11.5"]}},
            )
            .await
        })
        .unwrap();
    assert_eq!(
        malformed_kept, 2,
        "malformed dates inside the month are kept"
    );
    // Restore puts the archived bytes back; a second restore finds them all present.
    let docs: Vec<RawDocumentBuf> = january
        .raw
        .iter()
        .map(|b| RawDocumentBuf::from_bytes(b.clone()).unwrap())
        .collect();
    let refs: Vec<&bson::RawDocument> = docs.iter().map(|d| d.as_ref()).collect();
    assert_eq!(source.insert_documents(&refs).unwrap(), 5);
    assert_eq!(source.insert_documents(&refs).unwrap(), 0);
    assert_eq!(source.range_stats(&month("2024-01")).unwrap().count, 5);
    let first = january.ids[0].clone();
    let c = raw_coll.clone();
    let back = runtime
        .block_on(async move { c.find_one(doc! {"_id": first}).await })
        .unwrap()
        .unwrap();
    assert_eq!(back.as_bytes(), january.raw[0].as_slice());
    // Standalone: None; replica set: some lag. Either way it answers.
    source.replication_lag().unwrap();
}
