//! The two halves of the archive format that touch BSON bytes directly: a tiny writer that
//! builds one document per MySQL row without an intermediate `Document`, and a reader that
//! splits a stream of concatenated documents (what `mongodump` writes and `mongorestore`
//! reads) back into documents.

use std::io::{self, Read};

use anyhow::{Context as _, bail};

/// The largest document MongoDB accepts (16 MiB); anything larger in an archive is corruption.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Builds one BSON document in a reusable buffer.
#[derive(Debug, Default)]
pub struct DocumentWriter {
    buf: Vec<u8>,
}

impl DocumentWriter {
    /// Starts a new document, discarding the previous one.
    pub fn begin(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
    }

    fn key(&mut self, tag: u8, key: &str) {
        self.buf.push(tag);
        // BSON keys are C strings: an interior NUL would end the key early.
        self.buf
            .extend(key.bytes().map(|b| if b == 0 { b'_' } else { b }));
        self.buf.push(0);
    }

    /// Appends a UTF-8 string.
    pub fn string(&mut self, key: &str, value: &str) {
        self.key(0x02, key);
        self.buf
            .extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
    }

    /// Appends a 64-bit integer.
    pub fn int64(&mut self, key: &str, value: i64) {
        self.key(0x12, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends a double.
    pub fn double(&mut self, key: &str, value: f64) {
        self.key(0x01, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends generic binary data (subtype 0).
    pub fn binary(&mut self, key: &str, value: &[u8]) {
        self.key(0x05, key);
        self.buf
            .extend_from_slice(&(value.len() as i32).to_le_bytes());
        self.buf.push(0);
        self.buf.extend_from_slice(value);
    }

    /// Appends a null.
    pub fn null(&mut self, key: &str) {
        self.key(0x0A, key);
    }

    /// Ends the document and returns its bytes.
    pub fn finish(&mut self) -> &[u8] {
        self.buf.push(0);
        let len = (self.buf.len() as i32).to_le_bytes();
        self.buf[..4].copy_from_slice(&len);
        &self.buf
    }
}

/// Reads concatenated BSON documents from a byte stream.
pub struct DocumentReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Documents returned so far.
    pub count: u64,
    /// Bytes of documents returned so far.
    pub bytes: u64,
}

impl<R: Read> DocumentReader<R> {
    /// A reader over `inner` (typically a gzip decoder).
    pub fn new(inner: R) -> Self {
        DocumentReader {
            inner,
            buf: Vec::with_capacity(4096),
            count: 0,
            bytes: 0,
        }
    }

    /// The next document's bytes, `None` at a clean end of stream. A torn document (the
    /// stream ends inside it) or an impossible length is an error, never a silent end.
    pub fn next_document(&mut self) -> anyhow::Result<Option<&bson::RawDocument>> {
        let mut len_bytes = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut len_bytes[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => bail!(
                    "the archive ends inside a document length (document {})",
                    self.count + 1
                ),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("reading document {}", self.count + 1));
                }
            }
        }
        let len = i32::from_le_bytes(len_bytes);
        if len < 5 || len as usize > MAX_DOCUMENT_BYTES {
            bail!(
                "document {} has an impossible length {len}: the archive is corrupt",
                self.count + 1
            );
        }
        self.buf.clear();
        self.buf.extend_from_slice(&len_bytes);
        self.buf.resize(len as usize, 0);
        self.inner
            .read_exact(&mut self.buf[4..])
            .with_context(|| format!("the archive ends inside document {}", self.count + 1))?;
        self.count += 1;
        self.bytes += len as u64;
        let doc = bson::RawDocument::from_bytes(&self.buf)
            .with_context(|| format!("document {} is not valid BSON", self.count))?;
        Ok(Some(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_documents_are_valid_bson_and_read_back() {
        let mut w = DocumentWriter::default();
        let mut stream = Vec::new();
        for i in 0..3 {
            w.begin();
            w.int64("id", i);
            w.string("create_on", "2024-01-01 03:33:11");
            w.double("score", 1.5);
            w.binary("blob", &[0, 1, 2]);
            w.null("gone");
            stream.extend_from_slice(w.finish());
        }
        let mut r = DocumentReader::new(&stream[..]);
        let mut ids = Vec::new();
        while let Some(doc) = r.next_document().unwrap() {
            let d: bson::Document = doc.try_into().unwrap();
            ids.push(d.get_i64("id").unwrap());
            assert_eq!(d.get_str("create_on").unwrap(), "2024-01-01 03:33:11");
            assert_eq!(d.get_f64("score").unwrap(), 1.5);
            assert!(d.get("gone").unwrap().as_null().is_some());
        }
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(r.count, 3);
    }

    #[test]
    fn a_torn_stream_is_an_error_not_an_end() {
        let mut w = DocumentWriter::default();
        w.begin();
        w.string("a", "bbbbbbbb");
        let bytes = w.finish().to_vec();
        let torn = &bytes[..bytes.len() - 3];
        let mut r = DocumentReader::new(torn);
        assert!(r.next_document().is_err());
        let mut r = DocumentReader::new(&bytes[..2]);
        assert!(r.next_document().is_err());
    }
}
