//! Reading C arguments: strings, byte ranges, arrays and out-pointers, each checked for NULL
//! and bounds before it is read.

use std::ffi::{CStr, c_char};

use crate::{Error, Result};

/// Largest byte range any function accepts (the protocol's frame limit is far below).
pub(crate) const MAX_LEN: usize = 1 << 30;

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// An optional string argument: NULL is `None`.
///
/// # Safety
/// As [`str`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { str(p, what) }.map(Some)
}

/// A byte range argument; NULL is allowed with length 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if len > MAX_LEN {
        return Err(Error::invalid(format!(
            "{what}: length {len} is over the limit of {MAX_LEN} bytes"
        )));
    }
    if p.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(Error::invalid(format!("{what} is NULL with length {len}")));
    }
    // SAFETY: not NULL, `len` readable bytes by the caller's contract, len <= 1 GiB.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An array of `n` NUL-terminated strings.
///
/// # Safety
/// `p` is NULL (with `n` 0) or points to `n` pointers, each a NUL-terminated string.
pub(crate) unsafe fn strs<'a>(
    p: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<&'a str>> {
    if n > 4096 {
        return Err(Error::invalid(format!("{what}: {n} entries is over 4096")));
    }
    if n == 0 {
        return Ok(vec![]);
    }
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL with {n} entries")));
    }
    // SAFETY: not NULL, `n` pointers by the caller's contract.
    let ptrs = unsafe { std::slice::from_raw_parts(p, n) };
    ptrs.iter()
        // SAFETY: each is a NUL-terminated string by the caller's contract.
        .map(|s| unsafe { str(*s, what) })
        .collect()
}

/// An array of `n` u32 values.
///
/// # Safety
/// `p` is NULL (with `n` 0) or points to `n` readable u32 values.
pub(crate) unsafe fn u32s<'a>(p: *const u32, n: usize, what: &str) -> Result<&'a [u32]> {
    if n > 4096 {
        return Err(Error::invalid(format!("{what}: {n} entries is over 4096")));
    }
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL with {n} entries")));
    }
    // SAFETY: not NULL, `n` values by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Checks an out-pointer before any work is done.
pub(crate) fn out_ok<T>(p: *mut T, what: &str) -> Result<()> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} (the out-pointer) is NULL")));
    }
    Ok(())
}

/// Writes a result through an out-pointer checked with [`out_ok`].
///
/// # Safety
/// `p` is not NULL and points to writable memory for a `T`.
pub(crate) unsafe fn write<T>(p: *mut T, value: T) {
    // SAFETY: the caller's contract.
    unsafe { p.write(value) }
}
