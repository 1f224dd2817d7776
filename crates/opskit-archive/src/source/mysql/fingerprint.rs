//! The server's fingerprint of a row: `UNHEX(MD5(…))` over every column of the table, in
//! table order, each value as `QUOTE(CAST(col AS BINARY))`.
//!
//! Two types do not go through their own text form, which would not tell every value apart:
//! a `FLOAT` prints with 6 significant digits (`1.0000001` and `1.0000002` both print `1`), so
//! it is hashed as `CAST(col AS DOUBLE)`, whose text is exact; a `TIMESTAMP` prints in the
//! session zone, where the hour a DST change repeats shows two instants as one text, so it is
//! hashed as `UNIX_TIMESTAMP(col)`.
//!
//! `QUOTE(NULL)` is the bare word `NULL`; every other value is quoted with `'`, `\` and the
//! control characters escaped, so the text hashed is an injective encoding of the row (the
//! string `'NULL'` and NULL differ, a comma inside a value cannot shift a boundary). The
//! pieces are joined with `CONCAT`, not `CONCAT_WS`: should one `QUOTE` ever return NULL (its
//! result would exceed `max_allowed_packet`), the whole fingerprint is NULL instead of a hash
//! that silently leaves that column out. A NULL fingerprint is never exported (the record has
//! none, so its purge takes the locked compare path) and never matches at delete time.
//!
//! The export selects it after `*` under a reserved alias and strips it by position, so the
//! archived document holds exactly the table's columns (archives are byte-identical to an
//! export without it).

use mysql_async::Value;

use super::quote_ident;

/// The alias of the fingerprint column the export selects after `*` (stripped by position,
/// so a table column of that name changes nothing).
pub(super) const ALIAS: &str = "__opskit_fingerprint";

/// The fingerprint expression over `columns` (every column of the table, in table order, with
/// its `information_schema` `DATA_TYPE`).
pub fn fingerprint_expr(columns: &[(String, String)]) -> String {
    let quoted: Vec<String> = columns
        .iter()
        .map(|(name, data_type)| {
            let c = quote_ident(name);
            let value = match data_type.to_ascii_lowercase().as_str() {
                "float" => format!("CAST({c} AS DOUBLE)"),
                "timestamp" => format!("UNIX_TIMESTAMP({c})"),
                _ => c,
            };
            format!("QUOTE(CAST({value} AS BINARY))")
        })
        .collect();
    format!("UNHEX(MD5(CONCAT({})))", quoted.join(", ',', "))
}

/// A condition, for the purge's `DELETE`, that holds only while the table has exactly
/// `columns` (position, name, type): checked by the statement itself, under its own metadata
/// lock, so an `ALTER TABLE` that slips in after the purge last looked at the table makes the
/// statement delete nothing (every row is then kept as changed) instead of deleting rows whose
/// new column the fingerprints do not cover. Parameters: [`columns_guard_params`].
pub(super) fn columns_guard(columns: usize) -> String {
    format!(
        "(SELECT COUNT(*) = ? AND SUM((ORDINAL_POSITION, COLUMN_NAME, DATA_TYPE) IN ({})) = ? \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?)",
        vec!["(?,?,?)"; columns].join(",")
    )
}

/// The parameters of [`columns_guard`].
pub(super) fn columns_guard_params(
    database: &str,
    table: &str,
    columns: &[(String, String)],
) -> Vec<Value> {
    let n = Value::UInt(columns.len() as u64);
    let mut params = vec![n.clone()];
    for (i, (name, data_type)) in columns.iter().enumerate() {
        params.push(Value::UInt(i as u64 + 1));
        params.push(Value::Bytes(name.as_bytes().to_vec()));
        params.push(Value::Bytes(data_type.as_bytes().to_vec()));
    }
    params.push(n);
    params.push(Value::Bytes(database.as_bytes().to_vec()));
    params.push(Value::Bytes(table.as_bytes().to_vec()));
    params
}

/// The fingerprint column's value: 16 bytes, or `None` (NULL, or not an MD5).
pub(super) fn fingerprint_of(v: Option<&Value>) -> Option<[u8; 16]> {
    match v {
        Some(Value::Bytes(b)) => <[u8; 16]>::try_from(b.as_slice()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str) -> (String, String) {
        (name.into(), data_type.into())
    }

    #[test]
    fn every_column_is_quoted_in_order() {
        assert_eq!(
            fingerprint_expr(&[col("id", "bigint"), col("a`b", "varchar")]),
            "UNHEX(MD5(CONCAT(QUOTE(CAST(`id` AS BINARY)), ',', QUOTE(CAST(`a``b` AS BINARY)))))"
        );
        assert_eq!(
            fingerprint_expr(&[col("id", "int")]),
            "UNHEX(MD5(CONCAT(QUOTE(CAST(`id` AS BINARY)))))"
        );
    }

    #[test]
    fn floats_and_timestamps_are_hashed_exactly() {
        assert_eq!(
            fingerprint_expr(&[col("f", "FLOAT"), col("t", "timestamp")]),
            "UNHEX(MD5(CONCAT(QUOTE(CAST(CAST(`f` AS DOUBLE) AS BINARY)), ',', \
             QUOTE(CAST(UNIX_TIMESTAMP(`t`) AS BINARY)))))"
        );
    }

    #[test]
    fn the_columns_guard_has_one_parameter_per_placeholder() {
        let columns = [col("id", "bigint"), col("note", "varchar")];
        let sql = columns_guard(columns.len());
        let params = columns_guard_params("test", "t", &columns);
        assert_eq!(sql.matches('?').count(), params.len());
        assert_eq!(
            params[1..4],
            [
                Value::UInt(1),
                Value::Bytes(b"id".to_vec()),
                Value::Bytes(b"bigint".to_vec())
            ]
        );
        assert_eq!(
            params[params.len() - 2..],
            [Value::Bytes(b"test".to_vec()), Value::Bytes(b"t".to_vec())]
        );
    }

    #[test]
    fn only_an_md5_is_a_fingerprint() {
        let md5 = Value::Bytes(vec![7; 16]);
        assert_eq!(fingerprint_of(Some(&md5)), Some([7; 16]));
        assert_eq!(fingerprint_of(Some(&Value::NULL)), None);
        assert_eq!(fingerprint_of(Some(&Value::Bytes(vec![7; 15]))), None);
        assert_eq!(fingerprint_of(None), None);
    }
}
