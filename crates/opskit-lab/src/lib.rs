//! The lab: real servers from Debian's packages started on loopback under one directory.
