#!/usr/bin/env python3
"""A MongoDB wire-protocol test double for the opskit MongoDB source, built on mockupdb.

mockupdb is MongoDB's own driver-testing server: it speaks the real wire protocol (OP_MSG),
so the Rust driver handshakes with it, sends real commands, and parses real replies.

Usage: mongo_double.py LOG_FILE SCENARIO

Prints `PORT <n>` on stdout once listening, then answers requests until its stdin closes
(or 120 s pass). Every request's command document is appended to LOG_FILE as one JSON line
in canonical Extended JSON ({"opcode": 2013, "request": {...}}), and every exported document it serves as
{"served": "<hex of the exact BSON bytes>"}, so the test can compare bytes.

Scenarios:
  archive       a replica-less server with a `create_on_1` index; `find` returns the first
                2 documents and cursor id 1234, `getMore` the last 3 and cursor id 0.
  no_index      the collection has only the `_id_` index.
  no_collection listIndexes fails with NamespaceNotFound (26).
  stall_getmore like `archive`, but the first `getMore` is never answered.
  endless       like `archive`, but every `getMore` returns cursor id 1234 again (never ends).
  stall_delete  like `archive`, but the first `delete` is never answered.
  (every scenario) `insert` reports the first document as a duplicate key (already present);
                `delete` deletes every statement's document but the first, which a `find` by
                `_id: {$in}` then reports as still present (changed since the export).
  replset       replSetGetStatus reports a primary and two secondaries 2.5 s and 7 s behind;
                replSetGetConfig says the second one is delayed on purpose.
"""

import datetime
import json
import sys
import threading
import time

try:
    import bson
    from bson import json_util
    from bson.int64 import Int64
    from bson.objectid import ObjectId
    from bson.raw_bson import RawBSONDocument
    from mockupdb import MockupDB, OpMsgReply
except ImportError as e:  # the Rust test turns this exit code into a skip
    print(f"IMPORT-ERROR {e}", flush=True)
    sys.exit(3)

CURSOR_ID = 1234
MAX_WIRE_VERSION = 21  # MongoDB 7.0; the 3.x driver needs at least 8 (4.2)


def served_documents():
    """Documents with varied types and field orders: they must come back byte for byte."""
    docs = [
        {"_id": ObjectId("659200800000000000000001"), "create_on": "2024-01-01 00:00:00",
         "user": "ann", "n": 1},
        {"_id": ObjectId("659200800000000000000002"), "create_on": "2024-01-01 00:00:00",
         "n": Int64(2), "nested": {"z": 1.5, "a": [1, "two", None]}},
        {"_id": Int64(3), "create_on": "2024-01-15 12:30:00", "bin": bson.Binary(b"\x00\xff")},
        {"_id": "text-id", "create_on": "2024-01-31 23:59:59",
         "at": datetime.datetime(2024, 1, 31, 15, 59, 59, tzinfo=datetime.timezone.utc)},
        {"create_on": "2024-01-31 23:59:59", "_id": ObjectId("659200800000000000000005"),
         "msg": "\u4e2d\u6587"},
    ]
    return [RawBSONDocument(bson.encode(d)) for d in docs]


def hello_reply():
    return {
        "ismaster": True, "isWritablePrimary": True, "helloOk": True,
        "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48000000,
        "maxWriteBatchSize": 100000, "localTime": datetime.datetime.now(datetime.timezone.utc),
        "logicalSessionTimeoutMinutes": 30, "connectionId": 1,
        "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False, "ok": 1.0,
    }


def index_specs(scenario):
    specs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
    if scenario != "no_index":
        specs.append({"v": 2, "key": {"create_on": 1}, "name": "create_on_1"})
    return specs


def replset_status():
    now = datetime.datetime(2024, 2, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    member = lambda name, state, behind: {  # noqa: E731
        "name": name, "state": state,
        "optimeDate": now - datetime.timedelta(seconds=behind),
    }
    return {"set": "rs0", "members": [member("a:27017", 1, 0), member("b:27017", 2, 2.5),
                                      member("c:27017", 2, 7), {"name": "d:27017", "state": 7}],
            "ok": 1.0}


def main():
    log_path, scenario = sys.argv[1], sys.argv[2]
    log = open(log_path, "a", encoding="utf-8")
    lock = threading.Lock()

    def record(entry):
        with lock:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    docs = served_documents()
    for d in docs:
        record({"served": d.raw.hex()})

    server = MockupDB(verbose=False, request_timeout=1)
    port = server.run()
    print(f"PORT {port}", flush=True)

    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.time() + 120
    getmores = 0
    deletes = 0
    while not stop.is_set() and time.time() < deadline:
        try:
            request = server.receives(timeout=0.2)
        except AssertionError:
            continue  # nothing arrived
        except OSError:
            continue  # the client hung up before its request was read (driver shutdown)
        if request is None:
            break
        command = dict(request.doc)
        name = request.command_name.lower()
        record({"opcode": request.opcode, "request": json.loads(json_util.dumps(
            command, json_options=json_util.CANONICAL_JSON_OPTIONS))})
        ns = "test.user_logs"
        if name in ("hello", "ismaster"):
            request.reply(OpMsgReply(hello_reply()))
        elif name == "listindexes":
            if scenario == "no_collection":
                request.command_err(26, "ns does not exist: test.user_logs")
            else:
                request.reply({"cursor": {"id": Int64(0), "ns": ns,
                                          "firstBatch": index_specs(scenario)}, "ok": 1.0})
        elif name == "find":
            ids_in = (command.get("filter") or {}).get("_id", {})
            if isinstance(ids_in, dict) and "$in" in ids_in:
                # The purge's look-up of archived ids still present: the first one was changed
                # since the export (scenario `archive`), so it is still there.
                present = [{"_id": ids_in["$in"][0]}] if ids_in["$in"] else []
                request.reply({"cursor": {"id": Int64(0), "ns": ns, "firstBatch": present},
                               "ok": 1.0})
            elif command.get("limit"):  # anomaly examples: none
                request.reply({"cursor": {"id": Int64(0), "ns": ns, "firstBatch": []}, "ok": 1.0})
            else:
                request.reply({"cursor": {"id": Int64(CURSOR_ID), "ns": ns,
                                          "firstBatch": docs[:2]}, "ok": 1.0})
        elif name == "getmore":
            getmores += 1
            if scenario == "stall_getmore" and getmores == 1:
                continue  # never answered: the adapter must time out, not hang
            # `endless`: the cursor never ends, so only a killCursors can close it.
            more_id = CURSOR_ID if scenario == "endless" else 0
            request.reply({"cursor": {"id": Int64(more_id), "ns": ns, "nextBatch": docs[2:]},
                           "ok": 1.0})
        elif name == "aggregate":  # count_documents: $match + $group
            request.reply({"cursor": {"id": Int64(0), "ns": ns,
                                      "firstBatch": [{"_id": 1, "n": len(docs)}]}, "ok": 1.0})
        elif name == "collstats":
            request.reply({"ns": ns, "count": 5, "size": 1000, "avgObjSize": 200, "ok": 1.0})
        elif name == "delete":
            deletes += 1
            if scenario == "stall_delete" and deletes == 1:
                continue  # never answered: the purge must get a typed time-out and retry
            # The first statement's document changed since the export (it matches nothing);
            # every other one is deleted.
            request.reply({"n": max(len(command["deletes"]) - 1, 0), "ok": 1.0})
        elif name == "insert":  # restore: the first document is already present
            n = len(command.get("documents", []))
            request.reply({"n": max(n - 1, 0), "writeErrors": [
                {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error (test double)"}],
                "ok": 1.0})
        elif name == "replsetgetstatus":
            if scenario == "replset":
                request.reply(replset_status())
            else:
                request.command_err(76, "not running with --replSet")
        elif name == "replsetgetconfig":
            # c:27017 is delayed on purpose: its 7 s lag must not count.
            request.reply({"config": {"_id": "rs0", "members": [
                {"_id": 0, "host": "a:27017"}, {"_id": 1, "host": "b:27017"},
                {"_id": 2, "host": "c:27017", "secondaryDelaySecs": Int64(3600), "hidden": True,
                 "priority": 0}, {"_id": 3, "host": "d:27017", "arbiterOnly": True}]}, "ok": 1.0})
        elif name == "killcursors":
            request.reply({"cursorsKilled": command.get("cursors", []), "cursorsNotFound": [],
                           "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0})
        elif name in ("ping", "endsessions"):
            request.reply({"ok": 1.0})
        else:
            request.command_err(59, f"no such command: '{name}' (test double)")
    server.stop()


if __name__ == "__main__":
    main()
