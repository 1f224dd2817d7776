//! A realistic `test.user_logs` for the archive to work on (`opskit lab seed`, the drill, the
//! tests): `rows` documents spread evenly over one month, a tenth as many in each neighbouring
//! month (which an archive of the month must not touch), and four documents whose `create_on`
//! no month will ever match (missing, of another type or malformed), which must survive too.
//!
//! The same data goes into the lab's MariaDB (SQL) and its MongoDB-compatible server
//! (pymongo), so the archive's two sources are drilled on equal terms.

use std::fmt;

use anyhow::{Result, ensure};
use chrono::NaiveDate;
use opskit_core::config::value::Month;
use serde::{Deserialize, Serialize};

use crate::{MariadbServer, MongodbServer};

/// What to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSpec {
    /// The month that gets `rows` documents.
    pub month: Month,
    /// Documents in the month (at least 10).
    pub rows: u64,
}

/// How many documents of the seeded shape a source holds (what an archive must change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedCounts {
    /// Documents in the month.
    pub month: u64,
    /// Documents in the month before.
    pub before: u64,
    /// Documents in the month after.
    pub after: u64,
    /// Documents whose `create_on` no month matches.
    pub anomalies: u64,
}

/// The anomalies every seed holds.
pub const ANOMALIES: u64 = 4;

impl fmt::Display for SeedCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in the month, {} before, {} after, {} with a bad date",
            self.month, self.before, self.after, self.anomalies
        )
    }
}

/// `YYYY-MM-01 00:00:00` of a month.
fn first_instant(m: Month) -> String {
    format!("{:04}-{:02}-01 00:00:00", m.year, m.month)
}

/// Seconds in a month.
fn seconds(m: Month) -> u64 {
    let day = |m: Month| NaiveDate::from_ymd_opt(m.year, m.month, 1).expect("a valid month");
    (day(m.next()) - day(m)).num_seconds() as u64
}

impl SeedSpec {
    /// A seed of `rows` documents in `month`.
    pub fn new(month: Month, rows: u64) -> Result<SeedSpec> {
        ensure!(rows >= 10, "seed at least 10 rows (asked for {rows})");
        Ok(SeedSpec { month, rows })
    }

    /// Documents in each neighbouring month.
    pub fn side(&self) -> u64 {
        (self.rows / 10).max(1)
    }

    /// What a source holds right after this seed.
    pub fn counts(&self) -> SeedCounts {
        SeedCounts {
            month: self.rows,
            before: self.side(),
            after: self.side(),
            anomalies: ANOMALIES,
        }
    }

    /// `(first instant, seconds, documents)` of the month, the month before and after.
    fn spans(&self) -> [(String, u64, u64); 3] {
        let (m, side) = (self.month, self.side());
        [
            (first_instant(m), seconds(m), self.rows),
            (first_instant(m.prev()), seconds(m.prev()), side),
            (first_instant(m.next()), seconds(m.next()), side),
        ]
    }

    /// The SQL that (re)creates `test.user_logs` in MariaDB with this seed (uses MariaDB's
    /// `seq_0_to_N` sequence tables).
    pub fn sql(&self) -> String {
        let mut sql = String::from(
            "CREATE DATABASE IF NOT EXISTS test;
             USE test;
             DROP TABLE IF EXISTS test.user_logs;
             CREATE TABLE test.user_logs (id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on VARCHAR(32) NULL,
               user_id INT NOT NULL, action VARCHAR(32) NOT NULL, payload VARCHAR(200) NOT NULL,
               KEY idx_create_on (create_on)) ENGINE=InnoDB;\n",
        );
        for (i, (start, secs, n)) in self.spans().iter().enumerate() {
            let (action, payload) = if i == 0 {
                ("login", "CONCAT(MD5(seq), MD5(seq + 1), MD5(seq + 2))")
            } else {
                ("view", "MD5(seq)")
            };
            sql.push_str(&format!(
                "INSERT INTO test.user_logs (create_on, user_id, action, payload)
                   SELECT DATE_FORMAT(TIMESTAMP('{start}') + INTERVAL (seq * {last_sec} DIV {n}) SECOND, '%Y-%m-%d %H:%i:%s'),
                          seq % 1000, '{action}', {payload} FROM seq_0_to_{last};\n",
                last_sec = secs - 1,
                last = n - 1,
            ));
        }
        let d = format!("{:04}-{:02}", self.month.year, self.month.month);
        sql.push_str(&format!(
            "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
               (NULL, 1, 'anomaly', 'missing date'), ('{d}-5 3:03:11', 1, 'anomaly', 'unpadded'),
               ('{d}-05T03:03:11', 1, 'anomaly', 'iso T'), ('', 1, 'anomaly', 'empty');\n"
        ));
        sql
    }

    /// The pymongo script that (re)creates `test.user_logs` with this seed (documents get
    /// ObjectIds, as an application's inserts would).
    pub fn pymongo(&self) -> String {
        let spans: Vec<String> = self
            .spans()
            .iter()
            .enumerate()
            .map(|(i, (start, secs, n))| {
                format!(
                    "({start:?}, {secs}, {n}, {action:?})",
                    action = if i == 0 { "login" } else { "view" }
                )
            })
            .collect();
        let d = format!("{:04}-{:02}", self.month.year, self.month.month);
        format!(
            "import hashlib
coll = db['user_logs']
coll.drop()
coll.create_index('create_on')
for start, secs, n, action in [{spans}]:
    base = datetime.datetime.strptime(start, '%Y-%m-%d %H:%M:%S')
    batch = []
    for seq in range(n):
        t = base + datetime.timedelta(seconds=seq * (secs - 1) // n)
        h = hashlib.md5(str(seq).encode()).hexdigest()
        batch.append({{'create_on': t.strftime('%Y-%m-%d %H:%M:%S'), 'user_id': seq % 1000,
                       'action': action, 'payload': h * 3 if action == 'login' else h}})
        if len(batch) == 5000:
            coll.insert_many(batch, ordered=False)
            batch = []
    if batch:
        coll.insert_many(batch, ordered=False)
coll.insert_many([
    {{'user_id': 1, 'action': 'anomaly', 'payload': 'missing date'}},
    {{'create_on': datetime.datetime(2024, 1, 5, 3, 3, 11), 'user_id': 1, 'action': 'anomaly', 'payload': 'a BSON date'}},
    {{'create_on': '{d}-5 3:03:11', 'user_id': 1, 'action': 'anomaly', 'payload': 'unpadded'}},
    {{'create_on': '{d}-05T03:03:11', 'user_id': 1, 'action': 'anomaly', 'payload': 'iso T'}},
])
print(coll.count_documents({{}}))",
            spans = spans.join(", ")
        )
    }

    /// The bounds of the month, its neighbours' as `[lower, upper)` strings.
    fn bounds(&self) -> [(String, String); 3] {
        let m = self.month;
        [
            (first_instant(m), first_instant(m.next())),
            (first_instant(m.prev()), first_instant(m)),
            (first_instant(m.next()), first_instant(m.next().next())),
        ]
    }

    /// Seeds the lab's MariaDB; returns what it then holds.
    pub fn into_mariadb(&self, db: &MariadbServer) -> Result<SeedCounts> {
        db.sql(&self.sql())?;
        self.count_mariadb(db)
    }

    /// What the lab's MariaDB holds now, counted the way this seed was laid out.
    pub fn count_mariadb(&self, db: &MariadbServer) -> Result<SeedCounts> {
        let [m, b, a] = self.bounds();
        let range = |(lo, hi): &(String, String)| {
            format!("SUM(create_on >= '{lo}' AND create_on < '{hi}' AND action <> 'anomaly')")
        };
        let out = db.sql(&format!(
            "SELECT {}, {}, {}, SUM(action = 'anomaly') FROM test.user_logs",
            range(&m),
            range(&b),
            range(&a)
        ))?;
        parse_counts(&out)
    }

    /// Seeds the lab's MongoDB-compatible server; returns what it then holds.
    pub fn into_mongodb(&self, db: &MongodbServer) -> Result<SeedCounts> {
        db.python("test", &self.pymongo())?;
        self.count_mongodb(db)
    }

    /// What the lab's MongoDB-compatible server holds now.
    pub fn count_mongodb(&self, db: &MongodbServer) -> Result<SeedCounts> {
        let [m, b, a] = self.bounds();
        let range = |(lo, hi): &(String, String)| {
            format!(
                "coll.count_documents({{'create_on': {{'$gte': {lo:?}, '$lt': {hi:?}}}, 'action': {{'$ne': 'anomaly'}}}})"
            )
        };
        let out = db.python(
            "test",
            &format!(
                "coll = db['user_logs']\nprint({}, {}, {}, coll.count_documents({{'action': 'anomaly'}}))",
                range(&m),
                range(&b),
                range(&a)
            ),
        )?;
        parse_counts(&out)
    }
}

/// One seeded source in a [`SeedReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededSource {
    /// The lab component (`mariadb`, `mongodb`).
    pub component: String,
    /// Its `archive.source_uri`.
    pub uri: String,
    /// What it holds now.
    pub counts: SeedCounts,
}

/// What `opskit lab seed` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedReport {
    /// The seeded month.
    pub month: String,
    /// Every source seeded.
    pub sources: Vec<SeededSource>,
}

/// Seeds `test.user_logs` in every running lab source among `components` (both sources when
/// empty): MariaDB and the MongoDB-compatible server. A requested source the lab does not
/// run is an error naming it.
pub fn seed_lab(
    state: &crate::LabState,
    spec: &SeedSpec,
    components: &[crate::Component],
) -> Result<SeedReport> {
    use crate::Component;
    use crate::lab::LabView as _;
    let wanted = |c: Component| components.is_empty() || components.contains(&c);
    let mut sources = Vec::new();
    for c in components {
        anyhow::ensure!(
            matches!(c, Component::Mariadb | Component::Mongodb),
            "`{c}` holds no test.user_logs; seed mariadb or mongodb"
        );
    }
    let runs = |c: Component| state.of_kind(c.name()).next().is_some();
    if wanted(Component::Mariadb) && (runs(Component::Mariadb) || !components.is_empty()) {
        let db = MariadbServer::from_state(state)?;
        sources.push(SeededSource {
            component: Component::Mariadb.name().into(),
            uri: db.uri(),
            counts: spec.into_mariadb(&db)?,
        });
    }
    if wanted(Component::Mongodb) && (runs(Component::Mongodb) || !components.is_empty()) {
        let db = MongodbServer::from_state(state)?;
        sources.push(SeededSource {
            component: Component::Mongodb.name().into(),
            uri: db.uri.clone(),
            counts: spec.into_mongodb(&db)?,
        });
    }
    anyhow::ensure!(
        !sources.is_empty(),
        "the lab in {} runs neither mariadb nor mongodb: `opskit lab up` first",
        state.dir.display()
    );
    Ok(SeedReport {
        month: spec.month.to_string(),
        sources,
    })
}

fn parse_counts(out: &str) -> Result<SeedCounts> {
    // SUM over no rows is NULL in SQL: count it as 0.
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() == 4, "unexpected count output {out:?}");
    Ok(SeedCounts {
        month: v[0],
        before: v[1],
        after: v[2],
        anomalies: v[3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(month: &str, rows: u64) -> SeedSpec {
        SeedSpec::new(month.parse().unwrap(), rows).unwrap()
    }

    #[test]
    fn the_sql_spreads_the_month_and_its_neighbours_over_their_own_lengths() {
        let sql = spec("2024-02", 1000).sql();
        // February 2024 has 29 days; January and March 31.
        assert!(
            sql.contains("TIMESTAMP('2024-02-01 00:00:00') + INTERVAL (seq * 2505599 DIV 1000)")
        );
        assert!(
            sql.contains("TIMESTAMP('2024-01-01 00:00:00') + INTERVAL (seq * 2678399 DIV 100)")
        );
        assert!(sql.contains("TIMESTAMP('2024-03-01 00:00:00')"));
        assert!(sql.contains("seq_0_to_999;") && sql.contains("seq_0_to_99;"));
        assert!(sql.contains("'2024-02-5 3:03:11'") && sql.contains("'2024-02-05T03:03:11'"));
    }

    #[test]
    fn a_year_boundary_and_small_seeds_work() {
        let s = spec("2024-01", 10);
        assert_eq!(
            s.counts(),
            SeedCounts {
                month: 10,
                before: 1,
                after: 1,
                anomalies: 4
            }
        );
        assert!(s.sql().contains("TIMESTAMP('2023-12-01 00:00:00')"));
        assert!(
            s.pymongo()
                .contains("(\"2023-12-01 00:00:00\", 2678400, 1, \"view\")")
        );
        assert!(SeedSpec::new("2024-01".parse().unwrap(), 9).is_err());
    }
}
