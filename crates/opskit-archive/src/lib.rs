//! The monthly archive of spec §1: read one month of records from a [`source::Source`],
//! write them as a mongorestore-compatible `.bson.gz` with a manifest, upload it over SFTP,
//! verify it, and delete exactly the records that are in the verified file.

pub mod bounds;
pub mod source;
