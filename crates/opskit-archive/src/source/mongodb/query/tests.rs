//! Unit tests of every query, option and command the MongoDB source builds.
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
        fingerprint: None,
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
    let e =
        deleted_count(&doc! {"n": 1, "writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}]})
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
    let reply =
        doc! {"cursor": {"id": 0_i64, "ns": "test.user_logs", "firstBatch": [{"a": 1}]}, "ok": 1};
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
