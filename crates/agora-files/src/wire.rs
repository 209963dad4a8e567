//! The one encoding of file sharing's messages on the wire: postcard, as the chat and ledger
//! frames (compact, no field names, a length checked by the framing before anything is
//! decoded). Blob request and response headers, search requests and answers, and replica
//! requests all go through here. (Collections and tickets are content and user-facing text,
//! not frames: they stay JSON.)

use serde::{Serialize, de::DeserializeOwned};

/// Encodes a message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding plain data into a Vec cannot fail")
}

/// Decodes a whole frame; trailing bytes are an error (a frame is one message).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&(7u64, "x".to_string()));
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap().0, 7);
        bytes.push(0);
        assert!(decode::<(u64, String)>(&bytes).is_err());
    }
}
