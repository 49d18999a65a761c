//! Byte strings in the mesh's CBOR encodings (tokens, signed values, operator documents): written
//! as CBOR byte strings, and read back only as byte strings.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    match ciborium::Value::deserialize(d)? {
        ciborium::Value::Bytes(b) => Ok(b),
        _ => Err(serde::de::Error::custom("expected bytes")),
    }
}
