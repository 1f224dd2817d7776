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
mod tests;
