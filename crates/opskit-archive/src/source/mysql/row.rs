//! One row as one BSON document, the same way for the export and for the purge's
//! comparison (so "unchanged since the export" means byte-identical), and back (restore).
//!
//! Integers become int64, floating point double, dates and decimals strings in MySQL's own
//! text form, binary columns binary, NULL null.

use anyhow::bail;
use bson::{Bson, RawBsonRef};
use mysql_async::{Row, Value};

use crate::rawbson::DocumentWriter;

/// The binary character set number (`binary`): such columns are archived as BSON binary.
const BINARY_CHARSET: u16 = 63;

/// An archived or read id as a comparable key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum IdKey {
    Int(i64),
    Text(String),
}

impl IdKey {
    /// The key of an id the export produced (int64, or the key's text).
    pub(super) fn of(id: &Bson) -> anyhow::Result<IdKey> {
        Ok(match id {
            Bson::Int64(i) => IdKey::Int(*i),
            Bson::Int32(i) => IdKey::Int((*i).into()),
            Bson::String(s) => IdKey::Text(s.clone()),
            other => bail!(
                "an archived id of type {:?} cannot be a MySQL key",
                other.element_type()
            ),
        })
    }

    /// The statement parameter for this key.
    pub(super) fn value(&self) -> Value {
        match self {
            IdKey::Int(i) => Value::Int(*i),
            IdKey::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
        }
    }
}

/// Encodes the first `columns` columns of `row` into `doc` (begun here; read the bytes with
/// `doc.finish()`); returns the row's id (primary key `pk`) and the text of its date column.
/// Columns after them (the export's fingerprint) are not part of the document.
pub(super) fn encode_row(
    row: &Row,
    columns: usize,
    pk: &str,
    date_field: &str,
    doc: &mut DocumentWriter,
) -> anyhow::Result<(Bson, String)> {
    let all = row.columns_ref();
    let cols = &all[..columns.min(all.len())];
    let pk_i = cols.iter().position(|c| c.name_str() == pk);
    let date_i = cols.iter().position(|c| c.name_str() == date_field);
    let (Some(pk_i), Some(date_i)) = (pk_i, date_i) else {
        bail!("the query did not return the key and date columns");
    };
    doc.begin();
    let mut id = Bson::Null;
    let mut date = String::new();
    for (i, col) in cols.iter().enumerate() {
        let value = row.as_ref(i).unwrap_or(&Value::NULL);
        let name = col.name_str();
        let text = append_value(doc, &name, col, value, i == pk_i || i == date_i);
        if i == pk_i {
            id = match value {
                Value::Int(v) => Bson::Int64(*v),
                Value::UInt(v) => match i64::try_from(*v) {
                    Ok(v) => Bson::Int64(v),
                    Err(_) => Bson::String(v.to_string()),
                },
                _ => Bson::String(text.unwrap_or_default()),
            };
        } else if i == date_i {
            date = text.unwrap_or_default();
        }
    }
    Ok((id, date))
}

pub(super) fn bson_to_mysql(v: RawBsonRef<'_>) -> anyhow::Result<Value> {
    Ok(match v {
        RawBsonRef::Null => Value::NULL,
        RawBsonRef::String(s) => Value::Bytes(s.as_bytes().to_vec()),
        RawBsonRef::Int32(i) => Value::Int(i.into()),
        RawBsonRef::Int64(i) => Value::Int(i),
        RawBsonRef::Double(f) => Value::Double(f),
        RawBsonRef::Boolean(b) => Value::Int(b.into()),
        RawBsonRef::Binary(b) => Value::Bytes(b.bytes.to_vec()),
        RawBsonRef::DateTime(d) => Value::Bytes(
            d.try_to_rfc3339_string()
                .unwrap_or_default()
                .replace('T', " ")
                .trim_end_matches('Z')
                .as_bytes()
                .to_vec(),
        ),
        other => bail!(
            "a {:?} value cannot be inserted into a MySQL column",
            other.element_type()
        ),
    })
}

pub(super) fn format_date(
    (y, mo, d): (u16, u8, u8),
    (h, mi, s): (u8, u8, u8),
    us: u32,
    date_only: bool,
) -> String {
    if date_only {
        format!("{y:04}-{mo:02}-{d:02}")
    } else if us > 0 {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    }
}

/// Appends one column value to the document; returns its text form when `want_text`.
fn append_value(
    doc: &mut DocumentWriter,
    name: &str,
    col: &mysql_async::Column,
    value: &Value,
    want_text: bool,
) -> Option<String> {
    use mysql_async::consts::ColumnType as T;
    match value {
        Value::NULL => {
            doc.null(name);
            None
        }
        Value::Int(i) => {
            doc.int64(name, *i);
            want_text.then(|| i.to_string())
        }
        Value::UInt(u) => {
            match i64::try_from(*u) {
                Ok(i) => doc.int64(name, i),
                Err(_) => doc.string(name, &u.to_string()),
            }
            want_text.then(|| u.to_string())
        }
        Value::Float(f) => {
            doc.double(name, f64::from(*f));
            None
        }
        Value::Double(f) => {
            doc.double(name, *f);
            None
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            let date_only = col.column_type() == T::MYSQL_TYPE_DATE;
            let text = format_date((*y, *mo, *d), (*h, *mi, *s), *us, date_only);
            doc.string(name, &text);
            Some(text)
        }
        Value::Time(neg, days, h, m, s, us) => {
            let hours = u32::from(*h) + days * 24;
            let sign = if *neg { "-" } else { "" };
            let text = if *us > 0 {
                format!("{sign}{hours:02}:{m:02}:{s:02}.{us:06}")
            } else {
                format!("{sign}{hours:02}:{m:02}:{s:02}")
            };
            doc.string(name, &text);
            None
        }
        Value::Bytes(b) => {
            let textual = col.character_set() != BINARY_CHARSET
                || matches!(
                    col.column_type(),
                    T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL
                );
            match std::str::from_utf8(b) {
                Ok(s) if textual => {
                    doc.string(name, s);
                    want_text.then(|| s.to_string())
                }
                _ => {
                    doc.binary(name, b);
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_mysql() {
        assert_eq!(
            format_date((2024, 1, 5), (3, 3, 11), 0, false),
            "2024-01-05 03:03:11"
        );
        assert_eq!(format_date((2024, 1, 5), (0, 0, 0), 0, true), "2024-01-05");
        assert_eq!(
            format_date((2024, 1, 5), (3, 3, 11), 500, false),
            "2024-01-05 03:03:11.000500"
        );
    }

    #[test]
    fn ids_are_keys_and_parameters() {
        assert_eq!(IdKey::of(&Bson::Int64(7)).unwrap(), IdKey::Int(7));
        assert_eq!(IdKey::of(&Bson::Int32(7)).unwrap(), IdKey::Int(7));
        assert_eq!(IdKey::Text("a".into()).value(), Value::Bytes(b"a".to_vec()));
        assert!(IdKey::of(&Bson::Double(1.0)).is_err());
    }
}
