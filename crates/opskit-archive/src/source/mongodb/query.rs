//! Every query, option and command the MongoDB source sends, as pure functions, so what
//! goes to the server is unit-tested without a server.

use std::time::Duration;

use anyhow::{anyhow, bail};
use bson::{Bson, Document, Regex, doc};
use mongodb::options::{
    Acknowledgment, Collation, CountOptions, FindOptions, Hint, InsertManyOptions, WriteConcern,
};

use crate::bounds::MonthBounds;
use crate::source::ArchivedDoc;

/// The pattern of a well-formed date string (see [`crate::bounds::is_well_formed_date`]).
///
/// `[0-9]` rather than `\d` (which may match non-ASCII digits in Unicode mode) and `\z`
/// rather than `$` (which also matches before a trailing newline in PCRE).
pub const WELL_FORMED_DATE_PATTERN: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\z";

/// How many example `_id`s are reported per kind of anomaly.
pub const ANOMALY_EXAMPLES: i64 = 3;

/// The index the adapter hints for the month's range.
#[derive(Debug, Clone, PartialEq)]
pub struct DateIndex {
    /// The index name, as `listIndexes` reports it (the hint).
    pub name: String,
    /// Its key pattern.
    pub key: Document,
}

/// `{date: {$gte: lower, $lt: upper, $regex: well-formed}}`: the half-open month as strings,
/// of the exact `YYYY-MM-DD HH:MM:SS` shape only. A malformed string that sorts inside the
/// month (`2024-01-05T03:03:11`) is an anomaly to report, never archived nor deleted. The
/// range still bounds the index scan; the pattern is checked on the index keys.
pub fn range_filter(date_field: &str, bounds: &MonthBounds) -> Document {
    doc! { date_field: {
        "$gte": bounds.lower.as_str(),
        "$lt": bounds.upper.as_str(),
        "$regex": WELL_FORMED_DATE_PATTERN,
    } }
}

/// `{locale: "simple"}`: binary string comparison, whatever the collection's default.
pub fn simple_collation() -> Collation {
    Collation::builder().locale("simple").build()
}

/// The export's sort: the hinted index's key pattern, walked in the direction that makes the
/// date ascending (an index walks both ways, so the sort never blocks in memory).
pub fn export_sort(index: &DateIndex, date_field: &str) -> anyhow::Result<Document> {
    let first = index
        .key
        .get(date_field)
        .and_then(key_direction)
        .ok_or_else(|| {
            anyhow!(
                "index `{}` has no ascending/descending key on `{date_field}`",
                index.name
            )
        })?;
    let mut sort = Document::new();
    for (field, value) in &index.key {
        let dir = key_direction(value)
            .ok_or_else(|| anyhow!("index `{}` key `{field}` is not 1 or -1", index.name))?;
        sort.insert(field.clone(), dir * first);
    }
    Ok(sort)
}

/// The `find` options of the export: hint by name, index-order sort, simple collation, the
/// batch size, and a cursor the server does not time out.
pub fn export_find_options(
    index: &DateIndex,
    date_field: &str,
    batch_size: u32,
) -> anyhow::Result<FindOptions> {
    Ok(FindOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .sort(export_sort(index, date_field)?)
        .collation(simple_collation())
        .batch_size(batch_size)
        .no_cursor_timeout(true)
        .comment(Bson::String("opskit archive export".into()))
        .build())
}

/// `count_documents` options: the same hint and collation as the export, and `maxTimeMS`.
pub fn count_options(index: &DateIndex, max_time: Duration) -> CountOptions {
    CountOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .collation(simple_collation())
        .max_time(max_time)
        .build()
}

/// `find` options for a few example `_id`s of an anomaly.
pub fn example_find_options(index: &DateIndex, max_time: Duration) -> FindOptions {
    FindOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .collation(simple_collation())
        .projection(doc! {"_id": 1})
        .limit(ANOMALY_EXAMPLES)
        .max_time(max_time)
        .build()
}

/// The kinds of date anomaly of [`Anomalies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    /// Missing or null.
    Missing,
    /// Not a string (BSON date, number, array, ...).
    WrongType,
    /// A string of another shape.
    Malformed,
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnomalyKind::Missing => "missing",
            AnomalyKind::WrongType => "wrong-type",
            AnomalyKind::Malformed => "malformed",
        })
    }
}

/// One disjoint filter per anomaly kind. Arrays count as the wrong type even when they hold
/// strings (`$type: "string"` matches such arrays, and a range would match any element).
pub fn anomaly_filters(date_field: &str) -> Vec<(AnomalyKind, Document)> {
    vec![
        (
            AnomalyKind::Missing,
            doc! {"$or": [
                { date_field: {"$exists": false} },
                { date_field: {"$type": "null"} },
            ]},
        ),
        (
            AnomalyKind::WrongType,
            doc! {"$or": [
                { date_field: {"$exists": true, "$not": {"$type": ["string", "null"]}} },
                { date_field: {"$type": "array"} },
            ]},
        ),
        (
            AnomalyKind::Malformed,
            doc! {
                date_field: {
                    "$type": "string",
                    "$not": Regex { pattern: WELL_FORMED_DATE_PATTERN.into(), options: String::new() },
                },
                // Arrays are reported as the wrong type, not here.
                "$nor": [ { date_field: {"$type": "array"} } ],
            },
        ),
    ]
}

/// The most statements one `delete` command carries (the server's `maxWriteBatchSize`).
pub const MAX_DELETE_STATEMENTS: usize = 100_000;
/// The most bytes of statements one `delete` command carries, well under the 16 MiB limit
/// of a command document.
pub const MAX_DELETE_COMMAND_BYTES: usize = 8 << 20;

/// One statement per archived document: delete it only while it is exactly what was
/// archived (`$$ROOT` equal to the archived document, field for field and in order) and its
/// date is still inside the month. A document changed since the export matches nothing and
/// stays for the next late pass. `limit: 1`; simple collation, so strings compare as bytes.
pub fn delete_statement(
    doc: &ArchivedDoc,
    date_field: &str,
    bounds: &MonthBounds,
) -> anyhow::Result<Document> {
    let archived = Document::try_from(doc.raw.as_ref())
        .map_err(|e| anyhow!("an archived document cannot be read back: {e}"))?;
    Ok(doc! {
        "q": {
            "_id": doc.id.clone(),
            date_field: { "$gte": bounds.lower.as_str(), "$lt": bounds.upper.as_str() },
            // $literal: field names starting with '$' in the document are data, not operators.
            "$expr": { "$eq": ["$$ROOT", { "$literal": archived }] },
        },
        "limit": 1,
        "collation": { "locale": "simple" },
    })
}

/// The `delete` commands of one purge batch: unordered statements from [`delete_statement`],
/// `w: "majority"` with a `wtimeout`, split so each command stays within
/// [`MAX_DELETE_STATEMENTS`] and [`MAX_DELETE_COMMAND_BYTES`].
pub fn delete_commands(
    collection: &str,
    docs: &[ArchivedDoc],
    date_field: &str,
    bounds: &MonthBounds,
    wtimeout: Duration,
) -> anyhow::Result<Vec<Document>> {
    let mut commands = Vec::new();
    let mut statements: Vec<Bson> = Vec::new();
    let mut bytes = 0usize;
    let flush = |statements: &mut Vec<Bson>, commands: &mut Vec<Document>| {
        if !statements.is_empty() {
            commands.push(doc! {
                "delete": collection,
                "deletes": std::mem::take(statements),
                "ordered": false,
                "writeConcern": {
                    "w": "majority",
                    "wtimeout": i64::try_from(wtimeout.as_millis()).unwrap_or(i64::MAX),
                },
                "comment": "opskit archive purge",
            });
        }
    };
    for d in docs {
        let st = delete_statement(d, date_field, bounds)?;
        let size = d.raw.as_bytes().len() + 128;
        if !statements.is_empty()
            && (statements.len() >= MAX_DELETE_STATEMENTS
                || bytes + size > MAX_DELETE_COMMAND_BYTES)
        {
            flush(&mut statements, &mut commands);
            bytes = 0;
        }
        bytes += size;
        statements.push(Bson::Document(st));
    }
    flush(&mut statements, &mut commands);
    Ok(commands)
}

/// The documents deleted according to a `delete` reply; write errors and a write concern
/// error are failures (the batch is re-sent by the next run).
pub fn deleted_count(reply: &Document) -> anyhow::Result<u64> {
    if let Ok(errors) = reply.get_array("writeErrors")
        && let Some(first) = errors.first().and_then(Bson::as_document)
    {
        bail!(
            "the delete reported {} write error(s), the first: {} {}",
            errors.len(),
            first
                .get("code")
                .map(ToString::to_string)
                .unwrap_or_default(),
            first.get_str("errmsg").unwrap_or("")
        );
    }
    if let Ok(wc) = reply.get_document("writeConcernError") {
        bail!(
            "the delete was not acknowledged by a majority: {}",
            wc.get_str("errmsg").unwrap_or("write concern error")
        );
    }
    match reply.get("n") {
        Some(Bson::Int32(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        Some(Bson::Int64(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        Some(Bson::Double(x)) if *x >= 0.0 => Ok(*x as u64),
        _ => bail!("the delete reply has no count n: {reply}"),
    }
}

/// `{_id: {$in: ids}}`: which archived documents are still there after their batch (changed
/// since the export, so kept).
pub fn remaining_filter(ids: &[Bson]) -> Document {
    doc! { "_id": { "$in": ids.to_vec() } }
}

/// `find` options of [`remaining_filter`]: ids only, through the `_id` index.
pub fn remaining_find_options(max_time: Duration) -> FindOptions {
    FindOptions::builder()
        .projection(doc! {"_id": 1})
        .hint(Hint::Keys(doc! {"_id": 1}))
        .max_time(max_time)
        .build()
}

/// `insertMany` options of a restore: every document is tried (`ordered: false`), majority
/// write concern with a `wtimeout`.
pub fn restore_insert_options(wtimeout: Duration) -> InsertManyOptions {
    InsertManyOptions::builder()
        .ordered(false)
        .write_concern(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .w_timeout(wtimeout)
                .build(),
        )
        .comment(Bson::String("opskit archive restore".into()))
        .build()
}

/// Server code of a duplicate key.
pub const DUPLICATE_KEY: i32 = 11000;

/// How many of `n` documents were inserted when the only errors were duplicate keys (already
/// present, kept); `None` when another error or a write concern failure happened.
pub fn inserted_despite_duplicates(
    n: usize,
    codes: &[i32],
    write_concern_failed: bool,
) -> Option<u64> {
    if write_concern_failed || codes.iter().any(|c| *c != DUPLICATE_KEY) {
        return None;
    }
    Some(n.saturating_sub(codes.len()) as u64)
}

/// `{listIndexes: collection}`.
pub fn list_indexes_command(collection: &str) -> Document {
    doc! { "listIndexes": collection, "cursor": {} }
}

/// `{collStats: collection}` (needs the `collStats` action on the collection).
pub fn coll_stats_command(collection: &str) -> Document {
    doc! { "collStats": collection, "scale": 1 }
}

/// `avgObjSize` of a `collStats` reply (absent for an empty collection).
pub fn avg_obj_size(stats: &Document) -> Option<u64> {
    match stats.get("avgObjSize")? {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(x) if *x >= 0.0 => Some(x.round() as u64),
        _ => None,
    }
}

/// The documents of a command reply's `cursor.firstBatch`.
pub fn first_batch(reply: &Document) -> anyhow::Result<Vec<Document>> {
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map_err(|e| anyhow!("no cursor.firstBatch in the reply: {e}"))?;
    batch
        .iter()
        .map(|b| {
            b.as_document()
                .cloned()
                .ok_or_else(|| anyhow!("cursor.firstBatch holds a non-document"))
        })
        .collect()
}

fn key_direction(value: &Bson) -> Option<i32> {
    let x = match value {
        Bson::Int32(n) => f64::from(*n),
        Bson::Int64(n) => *n as f64,
        Bson::Double(x) => *x,
        _ => return None,
    };
    if x > 0.0 {
        Some(1)
    } else if x < 0.0 {
        Some(-1)
    } else {
        None
    }
}

/// Picks the index to hint from `listIndexes` specs: its first key is the date field with a
/// direction, and it sees every document with the simple collation (not partial, not sparse,
/// not hidden, no other collation). Among several, the one with the fewest keys wins.
pub fn choose_date_index(specs: &[Document], date_field: &str) -> anyhow::Result<DateIndex> {
    let mut rejected = Vec::new();
    let mut best: Option<DateIndex> = None;
    for spec in specs {
        let (Ok(name), Ok(key)) = (spec.get_str("name"), spec.get_document("key")) else {
            continue;
        };
        let Some((first, dir)) = key.iter().next() else {
            continue;
        };
        if first != date_field {
            continue;
        }
        let why_not = if key_direction(dir).is_none() {
            Some("its key is not 1 or -1 (text, hashed, ...)".to_string())
        } else if key.values().any(|v| key_direction(v).is_none()) {
            Some("a later key is not 1 or -1".to_string())
        } else if spec.contains_key("partialFilterExpression") {
            Some("it is partial".to_string())
        } else if spec.get_bool("sparse").unwrap_or(false) {
            Some("it is sparse".to_string())
        } else if spec.get_bool("hidden").unwrap_or(false) {
            Some("it is hidden".to_string())
        } else if let Ok(collation) = spec.get_document("collation")
            && collation.get_str("locale").unwrap_or("") != "simple"
        {
            Some(format!("it has collation {collation}"))
        } else {
            None
        };
        if let Some(why) = why_not {
            rejected.push(format!("`{name}` ({why})"));
            continue;
        }
        if best.as_ref().is_none_or(|b| key.len() < b.key.len()) {
            best = Some(DateIndex {
                name: name.to_string(),
                key: key.clone(),
            });
        }
    }
    best.ok_or_else(|| {
        let mut msg = format!(
            "no index on `{date_field}`: create one with db.<collection>.createIndex({{{date_field}: 1}}) \
             (without it the export and counts scan every month)"
        );
        if !rejected.is_empty() {
            msg.push_str(&format!("; not usable: {}", rejected.join(", ")));
        }
        anyhow!(msg)
    })
}

/// The hosts of a `replSetGetConfig` reply whose replication is delayed on purpose
/// (`secondaryDelaySecs`, or `slaveDelay` before 5.0, above 0).
pub fn delayed_members(reply: &Document) -> Vec<String> {
    let Ok(members) = reply
        .get_document("config")
        .and_then(|c| c.get_array("members"))
    else {
        return Vec::new();
    };
    members
        .iter()
        .filter_map(Bson::as_document)
        .filter(|m| {
            ["secondaryDelaySecs", "slaveDelay"]
                .iter()
                .any(|k| match m.get(*k) {
                    Some(Bson::Int32(n)) => *n > 0,
                    Some(Bson::Int64(n)) => *n > 0,
                    Some(Bson::Double(x)) => *x > 0.0,
                    _ => false,
                })
        })
        .filter_map(|m| m.get_str("host").ok().map(str::to_string))
        .collect()
}

/// The largest lag, in seconds, between the primary's optime and a secondary's, from a
/// `replSetGetStatus` reply. Only members in state SECONDARY and not in `excluded` (delayed
/// members) count; no such secondary gives 0.
pub fn replication_lag_from_status(status: &Document, excluded: &[String]) -> anyhow::Result<f64> {
    let members = status
        .get_array("members")
        .map_err(|_| anyhow!("no members array"))?;
    let optime_ms = |m: &Document| -> Option<i64> {
        match m.get("optimeDate") {
            Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
            _ => match m.get_document("optime").ok()?.get("ts") {
                Some(Bson::Timestamp(ts)) => Some(i64::from(ts.time) * 1000),
                _ => None,
            },
        }
    };
    let state = |m: &Document| m.get_i32("state").ok();
    let members: Vec<&Document> = members.iter().filter_map(Bson::as_document).collect();
    let primary = members
        .iter()
        .find(|m| state(m) == Some(1))
        .ok_or_else(|| anyhow!("the replica set has no primary"))?;
    let primary_ms = optime_ms(primary).ok_or_else(|| anyhow!("the primary reports no optime"))?;
    let mut lag_ms = 0i64;
    for m in members.iter().filter(|m| state(m) == Some(2)) {
        let name = m.get_str("name").unwrap_or("?");
        if excluded.iter().any(|e| e == name) {
            continue;
        }
        let ms = optime_ms(m).ok_or_else(|| anyhow!("secondary {name} reports no optime"))?;
        lag_ms = lag_ms.max(primary_ms - ms);
    }
    Ok(lag_ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Timestamp, oid::ObjectId};

    fn bounds() -> MonthBounds {
        MonthBounds::new("2024-01".parse().unwrap(), "Asia/Shanghai".parse().unwrap()).unwrap()
    }

    fn index(name: &str, key: Document) -> DateIndex {
        DateIndex {
            name: name.into(),
            key,
        }
    }

    #[test]
    fn range_filter_is_the_half_open_month_as_strings() {
        assert_eq!(
            range_filter("create_on", &bounds()),
            doc! {"create_on": {
                "$gte": "2024-01-01 00:00:00",
                "$lt": "2024-02-01 00:00:00",
                "$regex": WELL_FORMED_DATE_PATTERN,
            }}
        );
    }

    #[test]
    fn export_options_hint_sort_collation_batch_and_no_timeout() {
        let idx = index("create_on_1", doc! {"create_on": 1});
        let o = export_find_options(&idx, "create_on", 7_000).unwrap();
        assert_eq!(o.hint, Some(Hint::Name("create_on_1".into())));
        assert_eq!(o.sort, Some(doc! {"create_on": 1}));
        assert_eq!(
            o.collation.as_ref().map(|c| c.locale.as_str()),
            Some("simple")
        );
        assert_eq!(o.batch_size, Some(7_000));
        assert_eq!(o.no_cursor_timeout, Some(true));
        assert_eq!(o.limit, None);
        assert_eq!(o.max_time, None, "maxTimeMS is cumulative over getMores");
        // What goes on the wire, in the driver's own serialisation.
        let wire = bson::to_document(&o).unwrap();
        assert_eq!(
            wire.get_document("collation").unwrap(),
            &doc! {"locale": "simple"}
        );
        assert_eq!(wire.get_str("hint").unwrap(), "create_on_1");
    }

    #[test]
    fn export_sort_follows_a_compound_index_and_makes_the_date_ascending() {
        let asc = index("c_id", doc! {"create_on": 1, "_id": 1});
        assert_eq!(
            export_sort(&asc, "create_on").unwrap(),
            doc! {"create_on": 1, "_id": 1}
        );
        let desc = index("c_desc", doc! {"create_on": -1, "_id": 1});
        assert_eq!(
            export_sort(&desc, "create_on").unwrap(),
            doc! {"create_on": 1, "_id": -1}
        );
        let hashed = index("h", doc! {"create_on": "hashed"});
        assert!(export_sort(&hashed, "create_on").is_err());
    }

    #[test]
    fn counts_use_the_same_hint_and_collation_with_a_server_time_limit() {
        let idx = index("create_on_1", doc! {"create_on": 1});
        let o = count_options(&idx, Duration::from_secs(90));
        assert_eq!(o.hint, Some(Hint::Name("create_on_1".into())));
        assert_eq!(o.collation.unwrap().locale, "simple");
        assert_eq!(o.max_time, Some(Duration::from_secs(90)));
        let e = example_find_options(&idx, Duration::from_secs(5));
        assert_eq!(e.projection, Some(doc! {"_id": 1}));
        assert_eq!(e.limit, Some(ANOMALY_EXAMPLES));
        assert_eq!(e.hint, Some(Hint::Name("create_on_1".into())));
    }

    #[test]
    fn anomaly_filters_are_exact_and_disjoint_by_construction() {
        let f = anomaly_filters("create_on");
        let kinds: Vec<AnomalyKind> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                AnomalyKind::Missing,
                AnomalyKind::WrongType,
                AnomalyKind::Malformed
            ]
        );
        assert_eq!(
            f[0].1,
            doc! {"$or": [{"create_on": {"$exists": false}}, {"create_on": {"$type": "null"}}]}
        );
        assert_eq!(
            f[1].1,
            doc! {"$or": [
                {"create_on": {"$exists": true, "$not": {"$type": ["string", "null"]}}},
                {"create_on": {"$type": "array"}},
            ]}
        );
        assert_eq!(
            f[2].1,
            doc! {
                "create_on": {"$type": "string", "$not": Regex {
                    pattern: r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\z".into(),
                    options: String::new(),
                }},
                "$nor": [{"create_on": {"$type": "array"}}],
            }
        );
        assert_eq!(AnomalyKind::WrongType.to_string(), "wrong-type");
    }

    fn archived(id: Bson, date: &str, msg: &str) -> ArchivedDoc {
        let mut d = doc! {"_id": id.clone(), "create_on": date, "msg": msg, "$odd": 1};
        d.insert("n", 1_i64);
        ArchivedDoc {
            id,
            raw: bson::RawDocumentBuf::from_document(&d).unwrap(),
        }
    }

    #[test]
    fn delete_matches_each_document_exactly_as_archived_within_the_month() {
        let a = ObjectId::parse_str("65920080aaaaaaaaaaaaaaaa").unwrap();
        let doc = archived(Bson::ObjectId(a), "2024-01-05 03:33:11", "hi");
        let st = delete_statement(&doc, "create_on", &bounds()).unwrap();
        assert_eq!(
            st,
            doc! {
                "q": {
                    "_id": a,
                    "create_on": {"$gte": "2024-01-01 00:00:00", "$lt": "2024-02-01 00:00:00"},
                    "$expr": {"$eq": ["$$ROOT", {"$literal": {
                        "_id": a, "create_on": "2024-01-05 03:33:11", "msg": "hi", "$odd": 1, "n": 1_i64,
                    }}]},
                },
                "limit": 1,
                "collation": {"locale": "simple"},
            }
        );
    }

    #[test]
    fn delete_commands_are_unordered_majority_and_split_to_fit() {
        let docs: Vec<ArchivedDoc> = (0..5)
            .map(|i| archived(Bson::Int64(i), "2024-01-05 03:33:11", &"x".repeat(100)))
            .collect();
        let cmds = delete_commands(
            "user_logs",
            &docs,
            "create_on",
            &bounds(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(cmds.len(), 1);
        let c = &cmds[0];
        assert_eq!(c.get_str("delete").unwrap(), "user_logs");
        assert!(!c.get_bool("ordered").unwrap());
        assert_eq!(
            c.get_document("writeConcern").unwrap(),
            &doc! {"w": "majority", "wtimeout": 60_000_i64}
        );
        assert_eq!(c.get_array("deletes").unwrap().len(), 5);
        // 8 MiB of statements at most per command.
        let big: Vec<ArchivedDoc> = (0..3)
            .map(|i| archived(Bson::Int64(i), "2024-01-05 03:33:11", &"y".repeat(3 << 20)))
            .collect();
        let cmds = delete_commands(
            "user_logs",
            &big,
            "create_on",
            &bounds(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(cmds.len(), 2, "3 MiB documents: two fit in 8 MiB");
        assert!(
            delete_commands("c", &[], "d", &bounds(), Duration::ZERO)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn delete_replies_are_read_strictly() {
        assert_eq!(deleted_count(&doc! {"n": 4, "ok": 1.0}).unwrap(), 4);
        let e = deleted_count(
            &doc! {"n": 1, "writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}]},
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
        let e = deleted_count(&doc! {"n": 1, "writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}})
            .unwrap_err();
        assert!(e.to_string().contains("majority"), "{e}");
        assert!(deleted_count(&doc! {"ok": 1.0}).is_err());
        assert_eq!(
            remaining_filter(&[Bson::Int64(1), Bson::String("a".into())]),
            doc! {"_id": {"$in": [1_i64, "a"]}}
        );
        let o = remaining_find_options(Duration::from_secs(5));
        assert_eq!(o.projection, Some(doc! {"_id": 1}));
        assert_eq!(o.hint, Some(Hint::Keys(doc! {"_id": 1})));
    }

    #[test]
    fn restore_inserts_unordered_with_majority_and_keeps_duplicates() {
        let o = restore_insert_options(Duration::from_secs(30));
        assert_eq!(o.ordered, Some(false));
        let wc = o.write_concern.unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.w_timeout, Some(Duration::from_secs(30)));
        assert_eq!(inserted_despite_duplicates(10, &[], false), Some(10));
        assert_eq!(
            inserted_despite_duplicates(10, &[11000, 11000], false),
            Some(8)
        );
        assert_eq!(inserted_despite_duplicates(10, &[11000, 121], false), None);
        assert_eq!(inserted_despite_duplicates(10, &[11000], true), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            list_indexes_command("user_logs"),
            doc! {"listIndexes": "user_logs", "cursor": {}}
        );
        assert_eq!(
            coll_stats_command("user_logs"),
            doc! {"collStats": "user_logs", "scale": 1}
        );
        assert_eq!(avg_obj_size(&doc! {"avgObjSize": 201}), Some(201));
        assert_eq!(avg_obj_size(&doc! {"avgObjSize": 200.6}), Some(201));
        assert_eq!(avg_obj_size(&doc! {"count": 0}), None);
        let reply = doc! {"cursor": {"id": 0_i64, "ns": "test.user_logs", "firstBatch": [{"a": 1}]}, "ok": 1};
        assert_eq!(first_batch(&reply).unwrap(), vec![doc! {"a": 1}]);
        assert!(first_batch(&doc! {"ok": 1}).is_err());
    }

    fn spec(name: &str, key: Document) -> Document {
        doc! {"v": 2, "key": key, "name": name}
    }

    #[test]
    fn the_date_index_is_found_and_unusable_ones_are_named() {
        let id = spec("_id_", doc! {"_id": 1});
        let plain = spec("create_on_1", doc! {"create_on": 1});
        let compound = spec("create_on_1_uid_1", doc! {"create_on": 1, "uid": 1});
        let other = spec("uid_1_create_on_1", doc! {"uid": 1, "create_on": 1});
        let chosen =
            choose_date_index(&[id.clone(), compound.clone(), plain, other], "create_on").unwrap();
        assert_eq!(chosen.name, "create_on_1");
        let chosen = choose_date_index(&[id.clone(), compound], "create_on").unwrap();
        assert_eq!(chosen.name, "create_on_1_uid_1");

        let err = choose_date_index(std::slice::from_ref(&id), "create_on").unwrap_err();
        assert!(
            err.to_string().contains("createIndex({create_on: 1})"),
            "{err}"
        );

        let mut partial = spec("p", doc! {"create_on": 1});
        partial.insert("partialFilterExpression", doc! {"x": 1});
        let mut sparse = spec("s", doc! {"create_on": 1});
        sparse.insert("sparse", true);
        let mut hidden = spec("h", doc! {"create_on": 1});
        hidden.insert("hidden", true);
        let mut icu = spec("c", doc! {"create_on": 1});
        icu.insert("collation", doc! {"locale": "en", "strength": 2});
        let mut simple = spec("ok", doc! {"create_on": -1});
        simple.insert("collation", doc! {"locale": "simple"});
        let text = spec("t", doc! {"create_on": "text"});
        let err = choose_date_index(
            &[
                id.clone(),
                partial.clone(),
                sparse.clone(),
                hidden.clone(),
                icu.clone(),
                text,
            ],
            "create_on",
        )
        .unwrap_err()
        .to_string();
        for why in [
            "`p` (it is partial)",
            "`s` (it is sparse)",
            "`h` (it is hidden)",
            "`c` (it has collation",
            "`t` (its key",
        ] {
            assert!(err.contains(why), "{why} missing in: {err}");
        }
        let chosen =
            choose_date_index(&[id, partial, sparse, hidden, icu, simple], "create_on").unwrap();
        assert_eq!(chosen, index("ok", doc! {"create_on": -1}));
    }

    fn member(name: &str, state: i32, ms: i64) -> Document {
        doc! {"name": name, "state": state, "optimeDate": bson::DateTime::from_millis(ms)}
    }

    #[test]
    fn replication_lag_is_the_slowest_secondary_behind_the_primary() {
        let status = doc! {"set": "rs0", "ok": 1, "members": [
            member("a:27017", 1, 1_000_000),
            member("b:27017", 2, 999_500),
            member("c:27017", 2, 996_750),
            // An arbiter and a recovering member have no meaningful optime.
            {"name": "d:27017", "state": 7},
            member("e:27017", 3, 0),
        ]};
        assert_eq!(replication_lag_from_status(&status, &[]).unwrap(), 3.25);
        // c is a delayed member on purpose: it does not hold the purge back.
        assert_eq!(
            replication_lag_from_status(&status, &["c:27017".to_string()]).unwrap(),
            0.5
        );

        let alone = doc! {"members": [member("a", 1, 5)]};
        assert_eq!(replication_lag_from_status(&alone, &[]).unwrap(), 0.0);

        let by_ts = doc! {"members": [
            {"name": "a", "state": 1, "optime": {"ts": Timestamp { time: 100, increment: 1 }, "t": 1_i64}},
            {"name": "b", "state": 2, "optime": {"ts": Timestamp { time: 90, increment: 3 }, "t": 1_i64}},
        ]};
        assert_eq!(replication_lag_from_status(&by_ts, &[]).unwrap(), 10.0);

        let no_primary = doc! {"members": [member("b", 2, 5)]};
        let err = replication_lag_from_status(&no_primary, &[]).unwrap_err();
        assert!(err.to_string().contains("no primary"));
        let blind = doc! {"members": [member("a", 1, 5), {"name": "b", "state": 2}]};
        assert!(
            replication_lag_from_status(&blind, &[])
                .unwrap_err()
                .to_string()
                .contains("b reports no optime")
        );
    }

    #[test]
    fn delayed_members_are_read_from_the_replica_set_config() {
        let reply = doc! {"config": {"_id": "rs0", "members": [
            {"_id": 0, "host": "a:27017", "secondaryDelaySecs": 0_i64},
            {"_id": 1, "host": "b:27017", "secondaryDelaySecs": 3600_i64, "hidden": true, "priority": 0},
            {"_id": 2, "host": "c:27017", "slaveDelay": 600},
            {"_id": 3, "host": "d:27017", "hidden": true},
        ]}, "ok": 1};
        assert_eq!(delayed_members(&reply), ["b:27017", "c:27017"]);
        assert!(delayed_members(&doc! {"ok": 1}).is_empty());
    }
}
