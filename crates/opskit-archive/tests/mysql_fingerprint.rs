//! The MySQL purge by server-side fingerprint (issue 14), on the lab's real MariaDB.
//!
//! The export hands each row's fingerprint (the server's MD5 of the row) to its sink without
//! putting it into the archived document; a purge whose documents all carry one deletes with a
//! single statement and keeps exactly the rows changed since the export; a document without one
//! sends its batch part through the locked compare path, and so does a table whose columns
//! changed since the export. The server's general query log shows which path ran.

use std::collections::BTreeSet;
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, RawDocumentBuf, doc};
use opskit_archive::bounds::MonthBounds;
use opskit_archive::source::mysql::MysqlSource;
use opskit_archive::source::{ArchivedDoc, DeleteOutcome, Record, RecordSink, Source};
use opskit_lab::{Component, LabBuilder, MariadbServer};

/// January rows seeded per table (ids 1..=ROWS); id 100 is in February, 101 in December.
const ROWS: i64 = 12;

fn january() -> MonthBounds {
    MonthBounds::new("2024-01".parse().unwrap(), chrono_tz::UTC).unwrap()
}

/// The January row `id` as the archive must hold it: the table's columns, in table order,
/// with the types `opskit archive` gives them, and nothing else.
fn expected(id: i64) -> Document {
    doc! {
        "id": id,
        "create_on": format!("2024-01-{id:02} 10:00:00"),
        "user_id": id * 7,
        "note": if id % 2 == 1 { Bson::String(format!("n{id}")) } else { Bson::Null },
        "score": 0.3,
        "ratio": f64::from(1.000_000_1_f32),
        "tag": Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 0xff] }),
    }
}

/// Creates `test.<table>` with ROWS January rows, one in February and one in December.
fn seed(db: &MariadbServer, table: &str) {
    db.sql(&format!(
        "CREATE TABLE test.{table} (id BIGINT PRIMARY KEY, create_on VARCHAR(19) NULL, \
           user_id INT NOT NULL, note VARCHAR(32) NULL, score DOUBLE NOT NULL, ratio FLOAT NOT NULL, tag VARBINARY(8) NULL, \
           KEY idx_create_on (create_on)) ENGINE=InnoDB;
         INSERT INTO test.{table}
           SELECT seq, CONCAT('2024-01-', LPAD(seq, 2, '0'), ' 10:00:00'), seq * 7,
                  IF(seq % 2 = 1, CONCAT('n', seq), NULL), 0.3, 1.0000001, x'00ff'
           FROM test.seq_1_to_{ROWS};
         INSERT INTO test.{table} VALUES
           (100, '2024-02-01 00:00:00', 1, NULL, 0.3, 1, NULL),
           (101, '2023-12-31 23:59:59', 1, NULL, 0.3, 1, NULL);"
    ))
    .unwrap();
}

fn source(db: &MariadbServer, table: &str) -> MysqlSource {
    MysqlSource::new(
        &db.uri(),
        None,
        "test",
        table,
        "create_on",
        "UTC",
        Duration::from_secs(30),
    )
    .unwrap()
}

/// Every exported record, as the purge would receive it from the export.
#[derive(Default)]
struct Collected(Vec<ArchivedDoc>);

impl RecordSink for Collected {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        self.0.push(ArchivedDoc {
            id: record.id.clone(),
            raw: RawDocumentBuf::from_bytes(record.raw.to_vec())?,
            fingerprint: record.fingerprint,
        });
        Ok(())
    }
}

fn export(db: &MariadbServer, table: &str) -> Vec<ArchivedDoc> {
    let mut sink = Collected::default();
    source(db, table).export(&january(), &mut sink).unwrap();
    sink.0
}

fn ids(db: &MariadbServer, table: &str) -> BTreeSet<i64> {
    db.sql(&format!("SELECT id FROM test.{table}"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// What the server was sent about `table` since the general log was switched on: (command,
/// start of the statement).
fn statements(db: &MariadbServer, table: &str) -> Vec<(String, String)> {
    db.sql(&format!(
        "SELECT command_type, LEFT(CONVERT(argument USING utf8mb4), 2000) FROM mysql.general_log \
         WHERE argument LIKE '%`{table}`%' AND command_type IN ('Query', 'Execute')"
    ))
    .unwrap()
    .lines()
    .map(|l| {
        let (k, s) = l.split_once('\t').unwrap();
        (k.to_string(), s.to_string())
    })
    .collect()
}

#[test]
fn the_purge_deletes_by_server_fingerprint_and_keeps_every_changed_row() {
    let lab = LabBuilder::temporary("fp")
        .unwrap()
        .with(Component::Mariadb)
        .up()
        .expect("lab up");
    let db = lab.mariadb().unwrap();
    db.sql("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = ON;")
        .unwrap();

    // 1. Fingerprints are exported, outside the archived documents.
    seed(&db, "fp_fast");
    let docs = export(&db, "fp_fast");
    assert_eq!(docs.len(), ROWS as usize);
    for (d, id) in docs.iter().zip(1..) {
        assert_eq!(d.id, Bson::Int64(id));
        assert_eq!(
            d.raw.as_bytes(),
            bson::to_vec(&expected(id)).unwrap(),
            "row {id}: {:?}",
            d.raw
        );
    }
    let prints: BTreeSet<[u8; 16]> = docs.iter().map(|d| d.fingerprint.unwrap()).collect();
    assert_eq!(prints.len(), docs.len(), "one fingerprint per row");
    // The same export without fingerprints writes the same bytes.
    let mut plain = source(&db, "fp_fast");
    plain.set_fingerprints(false);
    let mut sink = Collected::default();
    plain.export(&january(), &mut sink).unwrap();
    assert!(sink.0.iter().all(|d| d.fingerprint.is_none()));
    let raw = |docs: &[ArchivedDoc]| -> Vec<Vec<u8>> {
        docs.iter().map(|d| d.raw.as_bytes().to_vec()).collect()
    };
    assert_eq!(raw(&sink.0), raw(&docs));

    // 2. Changes between the export and the purge, each one a row to keep.
    db.sql(
        "UPDATE test.fp_fast SET user_id = 999 WHERE id = 1;
         UPDATE test.fp_fast SET note = 'NULL' WHERE id = 2;          -- NULL -> the string 'NULL'
         UPDATE test.fp_fast SET note = NULL WHERE id = 3;            -- 'n3' -> NULL
         UPDATE test.fp_fast SET score = 0.1e0 + 0.2e0 WHERE id = 4;  -- one ulp off 0.3
         UPDATE test.fp_fast SET create_on = '2024-02-04 10:00:00' WHERE id = 5;
         DELETE FROM test.fp_fast WHERE id = 6;
         UPDATE test.fp_fast SET user_id = user_id WHERE id = 7;      -- not a change
         -- A FLOAT one ulp off: both print as `1` in the server's own text form.
         UPDATE test.fp_fast SET ratio = 1.0000002 WHERE id = 8;",
    )
    .unwrap();
    let mut s = source(&db, "fp_fast");
    let outcome = s.delete_archived(&docs, &january()).unwrap();
    assert_eq!(
        outcome,
        DeleteOutcome {
            deleted: ROWS as u64 - 7,
            changed: 6,
            gone: 1
        }
    );
    assert_eq!(
        ids(&db, "fp_fast"),
        BTreeSet::from([1, 2, 3, 4, 5, 8, 100, 101]),
        "the changed rows and the other months stay, every unchanged row is gone"
    );
    // A resumed purge sends the same batch again: nothing more goes.
    let again = s.delete_archived(&docs, &january()).unwrap();
    assert_eq!(
        again,
        DeleteOutcome {
            deleted: 0,
            changed: 6,
            gone: ROWS as u64 - 6
        }
    );
    assert_eq!(ids(&db, "fp_fast").len(), 8);
    let sent = statements(&db, "fp_fast");
    assert!(
        !sent.iter().any(|(_, s)| s.contains("FOR UPDATE")),
        "no row was locked and compared: {sent:?}"
    );
    let deletes = sent
        .iter()
        .filter(|(k, s)| k == "Execute" && s.starts_with("DELETE") && s.contains("MD5"))
        .count();
    assert_eq!(deletes, 2, "one DELETE per purge call: {sent:?}");

    // 3. A document without a fingerprint sends its part through the locked compare path,
    //    whose own encoding of the rows finds the exported documents byte-identical.
    seed(&db, "fp_locked");
    let mut docs = export(&db, "fp_locked");
    assert!(docs.iter().all(|d| d.fingerprint.is_some()));
    docs[0].fingerprint = None;
    db.sql("UPDATE test.fp_locked SET note = 'NULL' WHERE id = 2")
        .unwrap();
    let outcome = source(&db, "fp_locked")
        .delete_archived(&docs, &january())
        .unwrap();
    assert_eq!(
        outcome,
        DeleteOutcome {
            deleted: ROWS as u64 - 1,
            changed: 1,
            gone: 0
        }
    );
    assert_eq!(ids(&db, "fp_locked"), BTreeSet::from([2, 100, 101]));
    let sent = statements(&db, "fp_locked");
    assert_locked_path(&sent);

    // 4. A column added between the export and the purge escapes the fingerprints: the purge
    //    compares under a lock instead, where every row now differs from its archived document
    //    (it has one more column), so all of them stay for a later pass.
    //    One source exports and purges, as in a run.
    seed(&db, "fp_altered");
    let mut s = source(&db, "fp_altered");
    let mut sink = Collected::default();
    s.export(&january(), &mut sink).unwrap();
    assert!(sink.0.iter().all(|d| d.fingerprint.is_some()));
    db.sql("ALTER TABLE test.fp_altered ADD COLUMN extra INT NULL")
        .unwrap();
    let outcome = s.delete_archived(&sink.0, &january()).unwrap();
    assert_eq!(
        outcome,
        DeleteOutcome {
            deleted: 0,
            changed: ROWS as u64,
            gone: 0
        }
    );
    let sent = statements(&db, "fp_altered");
    assert_locked_path(&sent);
}

/// The purge locked the rows and compared them, and sent no fingerprint DELETE.
fn assert_locked_path(sent: &[(String, String)]) {
    assert!(
        sent.iter().any(|(_, s)| s.contains("FOR UPDATE")),
        "the rows were locked and compared: {sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|(_, s)| s.starts_with("DELETE") && s.contains("MD5")),
        "{sent:?}"
    );
}
