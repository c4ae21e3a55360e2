//! Decoding of frames, with errors precise enough to answer with a stable code.

use crate::{ErrorCode, Request, RequestBody, ServerFrame, MAX_FRAME_BYTES};

/// Why a client frame was rejected, with the request id when it could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError { id, code, message: message.into() }
    }
}

/// Decodes one client frame. Never panics, whatever the input: it tells a
/// too-large frame, malformed JSON, an unknown `type` and a known type with bad
/// fields apart, so the client gets the right [`ErrorCode`].
pub fn decode_request(text: &str) -> Result<Request, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::new(
            None,
            ErrorCode::FrameTooLarge,
            format!("frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}", text.len()),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FrameError::new(None, ErrorCode::MalformedJson, e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(FrameError::new(None, ErrorCode::InvalidRequest, "a frame must be a JSON object"));
    };
    let id = obj.get("id").and_then(|v| v.as_u64());
    let Some(id) = id else {
        return Err(FrameError::new(None, ErrorCode::InvalidRequest, "missing or invalid `id` (an unsigned integer)"));
    };
    let kind = match obj.get("type") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        _ => return Err(FrameError::new(Some(id), ErrorCode::InvalidRequest, "missing or invalid `type`")),
    };
    if !RequestBody::TYPES.contains(&kind) {
        return Err(FrameError::new(Some(id), ErrorCode::UnknownType, format!("unknown request type `{kind}`")));
    }
    serde_json::from_value::<Request>(value)
        .map_err(|e| FrameError::new(Some(id), ErrorCode::InvalidRequest, e.to_string()))
}

/// Decodes one server frame (client side). Unknown frames are an error the
/// client logs and skips, so a newer server can add frame types.
pub fn decode_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tells_errors_apart() {
        assert_eq!(decode_request("{not json").expect_err("must be rejected").code, ErrorCode::MalformedJson);
        assert_eq!(decode_request("[1,2]").expect_err("must be rejected").code, ErrorCode::InvalidRequest);
        let e = decode_request(r#"{"id":3,"type":"teleport"}"#).expect_err("must be rejected");
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::UnknownType));
        let e = decode_request(r#"{"id":4,"type":"send","text":"x"}"#).expect_err("must be rejected");
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::InvalidRequest));
        let big = format!(r#"{{"id":1,"type":"ping","pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(decode_request(&big).expect_err("must be rejected").code, ErrorCode::FrameTooLarge);
        let ok = decode_request(r#"{"id":5,"type":"ping"}"#).expect("ping decodes");
        assert_eq!(ok.id, 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = decode_request(&text);
            let _ = decode_server_frame(&text);
        }

        #[test]
        fn json_shaped_input_never_panics(
            id in proptest::option::of(any::<i64>()),
            kind in proptest::sample::select(RequestBody::TYPES.to_vec()),
            field in "[a-z_]{1,12}".prop_filter("not id/type", |f| f != "id" && f != "type"),
            value in prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,40}".prop_map(serde_json::Value::from),
            ],
        ) {
            let mut obj = serde_json::Map::new();
            if let Some(id) = id { obj.insert("id".into(), id.into()); }
            obj.insert("type".into(), kind.into());
            obj.insert(field, value);
            let text = serde_json::Value::Object(obj).to_string();
            match decode_request(&text) {
                Ok(req) => prop_assert!(id.is_some_and(|i| i as u64 == req.id)),
                Err(e) => prop_assert!(e.code != ErrorCode::MalformedJson),
            }
        }
    }
}
