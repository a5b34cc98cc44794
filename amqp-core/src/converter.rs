//! Turning values into message bodies and back. JSON by default; plug in another format by
//! implementing [`MessageConverter`] for the serde types you send.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Converts between Rust values and message bodies.
///
/// The methods are generic over serde types, so a converter is chosen per template or listener
/// as a type parameter rather than a trait object.
pub trait MessageConverter: Send + Sync + 'static {
    /// The `content_type` written on outgoing messages.
    fn content_type(&self) -> &str;

    /// Serializes a value into a body.
    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;

    /// Deserializes a body; `content_type` is the message's, if it had one.
    fn deserialize<T: DeserializeOwned>(
        &self,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<T>;
}

/// JSON through `serde_json` (`application/json`).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonConverter;

impl MessageConverter for JsonConverter {
    fn content_type(&self) -> &str {
        "application/json"
    }

    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::Serialize {
            type_name: std::any::type_name::<T>(),
            source: Box::new(e),
        })
    }

    fn deserialize<T: DeserializeOwned>(
        &self,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| Error::Deserialize {
            type_name: std::any::type_name::<T>(),
            content_type: content_type.map(str::to_owned),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
    }

    #[test]
    fn json_round_trips_and_names_the_type_on_failure() {
        let c = JsonConverter;
        let body = c.serialize(&Order { id: 7 }).unwrap();
        assert_eq!(
            c.deserialize::<Order>(&body, Some("application/json"))
                .unwrap(),
            Order { id: 7 }
        );
        let err = c.deserialize::<Order>(b"{", None).unwrap_err().to_string();
        assert!(err.contains("Order"), "{err}");
    }
}
