//! The outcome of a call or a session: a [`Code`](crate::v1::Code) and a human-readable message.

use crate::v1::{Code, Response};

/// A non-OK outcome carried on the wire in `Response`, `Reject` or `Goodbye`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code_name(*code))]
pub struct Status {
    /// What went wrong.
    pub code: Code,
    /// Why, for a human.
    pub message: String,
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `CODE_INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `CODE_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `CODE_INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// `CODE_FAILED_PRECONDITION`.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// `CODE_PERMISSION_DENIED`.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }

    /// The error `Response` for request `id`.
    pub fn to_response(&self, id: u64) -> Response {
        Response {
            id,
            code: self.code as i32,
            message: self.message.clone(),
            payload: Default::default(),
        }
    }

    /// Reads the status of a response: `Ok(())` for `CODE_OK`, otherwise the status. An unknown
    /// numeric code (from a newer peer) becomes `CODE_UNKNOWN` with the number in the message.
    pub fn from_wire(code: i32, message: &str) -> Result<(), Status> {
        match Code::try_from(code) {
            Ok(Code::Ok) => Ok(()),
            Ok(code) => Err(Status::new(code, message)),
            Err(_) => Err(Status::new(
                Code::Unknown,
                format!("unknown status code {code}: {message}"),
            )),
        }
    }
}

/// The name of a code as written in the .proto file, without the `CODE_` prefix.
pub fn code_name(code: Code) -> &'static str {
    code.as_str_name()
        .strip_prefix("CODE_")
        .unwrap_or(code.as_str_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_are_reported_not_dropped() {
        let err = Status::from_wire(9999, "later").unwrap_err();
        assert_eq!(err.code, Code::Unknown);
        assert!(err.message.contains("9999"));
        assert!(Status::from_wire(0, "").is_ok());
        let err = Status::from_wire(Code::DeadlineExceeded as i32, "slow").unwrap_err();
        assert_eq!(err.to_string(), "DEADLINE_EXCEEDED: slow");
    }
}
