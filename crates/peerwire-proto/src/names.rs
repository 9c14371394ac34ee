//! Method and topic names: `namespace.Name`.
//!
//! A namespace is 1-32 bytes of `[a-z0-9_]` starting with a letter; the name after the first `.`
//! is 1-95 bytes of `[A-Za-z0-9_.]`. The whole name is at most 128 bytes.

/// Longest accepted method or topic name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Longer than [`MAX_NAME_LEN`].
    #[error("name is {0} bytes long, the maximum is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// No `.` separating namespace and name.
    #[error("name {0:?} has no namespace (expected \"namespace.Name\")")]
    NoNamespace(String),
    /// The namespace part is empty, too long or has characters outside `[a-z0-9_]`.
    #[error(
        "invalid namespace in {0:?} (expected 1-{MAX_NAMESPACE_LEN} of [a-z0-9_], starting with a letter)"
    )]
    BadNamespace(String),
    /// The part after the namespace is empty or has characters outside `[A-Za-z0-9_.]`.
    #[error("invalid name in {0:?} (expected [A-Za-z0-9_.] after the namespace)")]
    BadName(String),
}

/// Checks a namespace on its own.
pub fn validate_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= MAX_NAMESPACE_LEN
        && ns.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Splits and checks `namespace.Name`, returning the namespace.
pub fn namespace_of(name: &str) -> Result<&str, NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let Some((ns, rest)) = name.split_once('.') else {
        return Err(NameError::NoNamespace(name.to_owned()));
    };
    if !validate_namespace(ns) {
        return Err(NameError::BadNamespace(name.to_owned()));
    }
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(NameError::BadName(name.to_owned()));
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(namespace_of("display.GetState"), Ok("display"));
        assert_eq!(namespace_of("a1_b.X.Y"), Ok("a1_b"));
        assert!(matches!(
            namespace_of("GetState"),
            Err(NameError::NoNamespace(_))
        ));
        assert!(matches!(
            namespace_of("Display.X"),
            Err(NameError::BadNamespace(_))
        ));
        assert!(matches!(
            namespace_of(".X"),
            Err(NameError::BadNamespace(_))
        ));
        assert!(matches!(namespace_of("d."), Err(NameError::BadName(_))));
        assert!(matches!(namespace_of("d.a b"), Err(NameError::BadName(_))));
        let long = format!("d.{}", "x".repeat(200));
        assert!(matches!(namespace_of(&long), Err(NameError::TooLong(202))));
    }
}
