//! Kafka framing: every request and response is an `int32` length followed by that many bytes.

/// Kafka's `socket.request.max.bytes` default (100 MiB).
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 104_857_600;
/// api_key + api_version + correlation_id: the part of a request header every version has.
pub const HEADER_FIXED_BYTES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame length {len} exceeds socket.request.max.bytes ({max})")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
}

/// Reads a frame's length prefix and checks it against the configured maximum.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(prefix);
    if len < 0 {
        return Err(FrameError::NegativeLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < HEADER_FIXED_BYTES {
        return Err(FrameError::TooShort(len));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_refuses_negative_oversize_and_short() {
        assert_eq!(frame_len(100i32.to_be_bytes(), 1000), Ok(100));
        assert_eq!(frame_len((-1i32).to_be_bytes(), 1000), Err(FrameError::NegativeLength(-1)));
        assert_eq!(
            frame_len(1001i32.to_be_bytes(), 1000),
            Err(FrameError::TooLarge { len: 1001, max: 1000 })
        );
        assert_eq!(frame_len(3i32.to_be_bytes(), 1000), Err(FrameError::TooShort(3)));
    }
}
