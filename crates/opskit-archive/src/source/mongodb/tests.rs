//! Unit tests of the MongoDB adapter (no server).

use super::*;
use bson::rawdoc;
use mongodb::options::ServerAddress;

#[test]
fn a_record_is_the_exact_bytes_with_its_id_and_date() {
    let doc = rawdoc! {"_id": 42_i32, "create_on": "2024-01-05 03:33:11", "msg": "hi"};
    let parts = record_of(&doc, "create_on").unwrap();
    assert_eq!(parts.id, Bson::Int32(42));
    assert_eq!(parts.date, "2024-01-05 03:33:11");
    assert_eq!(parts.raw, doc.as_bytes());

    let dated = rawdoc! {"_id": 1_i32, "create_on": bson::DateTime::from_millis(0)};
    let err = record_of(&dated, "create_on").unwrap_err().to_string();
    assert!(
        err.contains("document 1") && err.contains("not a string"),
        "{err}"
    );
    assert!(record_of(&rawdoc! {"create_on": "x"}, "create_on").is_err());
}

#[test]
fn the_password_goes_into_the_credential_the_uri_names() {
    let tuning = MongoSourceOptions::default();
    let mut anonymous = ClientOptions::builder()
        .hosts(vec![ServerAddress::parse("db1:27017").unwrap()])
        .build();
    let err = apply_client_settings(&mut anonymous, Some("pw".into()), &tuning).unwrap_err();
    assert!(err.to_string().contains("names no user"));

    let mut named = ClientOptions::builder()
        .hosts(vec![ServerAddress::parse("db1:27017").unwrap()])
        .credential(
            Credential::builder()
                .username("archiver".to_string())
                .build(),
        )
        .build();
    apply_client_settings(&mut named, Some("pw".into()), &tuning).unwrap();
    let cred = named.credential.as_ref().unwrap();
    assert_eq!(cred.password.as_deref(), Some("pw"));
    assert_eq!(named.connect_timeout, Some(tuning.command_timeout));
    assert_eq!(named.server_selection_timeout, Some(tuning.command_timeout));
    assert!(
        !format!("{:?}", named.credential).contains("pw\""),
        "Debug must redact"
    );
    assert_eq!(
        describe_target(&named, "test", "user_logs"),
        "mongodb://db1:27017/test.user_logs"
    );
}

#[test]
fn connect_errors_name_the_config_key_and_never_the_password() {
    let err = |uri: &str, pw: Option<&Path>| {
        let e = MongoSource::connect(
            uri,
            pw,
            "test",
            "user_logs",
            "create_on",
            Default::default(),
        )
        .err()
        .expect("refused");
        format!("{e:#}")
    };
    let e = err("mongodb://archiver@db1:notaport/", None);
    assert!(
        e.starts_with("archive.source_uri: bad MongoDB URI `mongodb://db1:notaport/`"),
        "{e}"
    );
    let e = err(
        "mongodb://archiver@db1/",
        Some(Path::new("/nonexistent/opskit-pw")),
    );
    assert!(e.starts_with("archive.source_password_file: "), "{e}");
    let dir = std::env::temp_dir().join(format!("opskit-mongo-conn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "hunter2\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = err("mongodb://archiver:hunter2@db1/", None);
    assert!(
        e.starts_with("archive.source_uri: ") && e.contains("holds a password"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = err("mongodb://db1/", Some(&file));
    assert!(
        e.starts_with("archive.source_uri: ") && e.contains("names no user"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
    // With a user, the client is built without contacting the server.
    let source = MongoSource::connect(
        "mongodb://archiver@db1:27017,db2:27017/?replicaSet=rs0",
        Some(&file),
        "test",
        "user_logs",
        "create_on",
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        source.describe(),
        "mongodb://db1:27017,db2:27017/test.user_logs"
    );
    assert_eq!(source.id_field(), "_id");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn uris_are_redacted_in_messages() {
    assert_eq!(
        redact_uri("mongodb://archiver@db1:27017,db2/?authSource=admin"),
        "mongodb://db1:27017,db2/?authSource=admin"
    );
    assert_eq!(redact_uri("mongodb://u:p@h"), "mongodb://h");
    assert_eq!(redact_uri("nonsense"), "(unparsable URI)");
}

#[test]
fn a_failed_command_is_reported_in_one_short_line() {
    let raw = anyhow::anyhow!("{}\n00 01 02 03 04 05", "x".repeat(300)).context("replSetGetConfig");
    let line = short_error(&raw);
    assert!(line.starts_with("replSetGetConfig"), "{line}");
    assert!(
        !line.contains('\n') && line.chars().count() <= 161,
        "{line}"
    );
    let long = anyhow::anyhow!("{}\n00 01 02", "y".repeat(300));
    let line = short_error(&long);
    assert_eq!(
        line.chars().count(),
        161,
        "cut at 160 characters and marked"
    );
    assert!(line.ends_with('…') && !line.contains("00 01"));
}
