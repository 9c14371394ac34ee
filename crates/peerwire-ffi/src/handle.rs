//! Opaque handles: boxed, tagged with a magic number per kind, and in the debug build recorded
//! in a registry of live handles, so that a freed handle (used again or freed twice) or a
//! handle of another kind is refused with `PEERWIRE_INVALID_HANDLE` in the common cases
//! rather than read. The release build checks NULL and the magic number only: using a freed
//! handle is undefined behaviour, as the header says.

use crate::{Error, Result, peerwire_status::PEERWIRE_INVALID_HANDLE};

/// A kind of handle.
pub(crate) trait Handle: Sized {
    /// Tells this kind from the others (and from freed memory).
    const MAGIC: u64;
    /// The C type's name, for messages.
    const KIND: &'static str;
    fn magic(&self) -> u64;
    fn set_magic(&mut self, magic: u64);
}

/// Written into a handle as it is freed.
const FREED: u64 = 0xdead_f4ee_dead_f4ee;

#[cfg(debug_assertions)]
mod live {
    use std::collections::HashMap;
    use std::sync::{Mutex, MutexGuard};

    static LIVE: Mutex<Option<HashMap<usize, u64>>> = Mutex::new(None);

    pub(super) fn map() -> MutexGuard<'static, Option<HashMap<usize, u64>>> {
        LIVE.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Moves `value` to the heap and hands its address to C.
pub(crate) fn give<T: Handle>(value: T) -> *mut T {
    let p = Box::into_raw(Box::new(value));
    #[cfg(debug_assertions)]
    live::map()
        .get_or_insert_with(Default::default)
        .insert(p as usize, T::MAGIC);
    p
}

fn check<T: Handle>(p: *const T) -> Result<()> {
    if p.is_null() {
        return Err(Error::invalid(format!("{} is NULL", T::KIND)));
    }
    #[cfg(debug_assertions)]
    if live::map()
        .as_ref()
        .and_then(|m| m.get(&(p as usize)))
        .is_none_or(|magic| *magic != T::MAGIC)
    {
        return Err(Error::new(
            PEERWIRE_INVALID_HANDLE,
            format!(
                "{p:p} is not a live {} (freed already, or another kind of handle)",
                T::KIND
            ),
        ));
    }
    Ok(())
}

fn bad_magic<T: Handle>(p: *const T) -> Error {
    Error::new(
        PEERWIRE_INVALID_HANDLE,
        format!("{p:p} is not a live {} (bad magic number)", T::KIND),
    )
}

/// Borrows a handle.
///
/// # Safety
/// `p` is NULL or points to a live `T` made by [`give`]; the borrow ends before it is freed.
pub(crate) unsafe fn borrow<'a, T: Handle>(p: *const T) -> Result<&'a T> {
    check(p)?;
    // SAFETY: not NULL (checked), and live by the caller's contract (and, in the debug build,
    // by the registry).
    let r = unsafe { &*p };
    if r.magic() != T::MAGIC {
        return Err(bad_magic(p));
    }
    Ok(r)
}

/// Takes a handle back from C: it is invalid afterwards.
///
/// # Safety
/// `p` is NULL or points to a live `T` made by [`give`], which no other thread uses.
pub(crate) unsafe fn take<T: Handle>(p: *mut T) -> Result<Box<T>> {
    check(p)?;
    #[cfg(debug_assertions)]
    if let Some(m) = live::map().as_mut() {
        m.remove(&(p as usize));
    }
    // SAFETY: not NULL (checked), made by `give` (Box::into_raw) and live by the caller's
    // contract; removed from the registry above, so it is taken once.
    let mut b = unsafe { Box::from_raw(p) };
    if b.magic() != T::MAGIC {
        // Not ours after all: leak rather than free what we did not allocate.
        std::mem::forget(b);
        return Err(bad_magic(p));
    }
    b.set_magic(FREED);
    Ok(b)
}

/// Borrows a handle mutably.
///
/// # Safety
/// As [`borrow`], and no other thread uses the handle meanwhile.
pub(crate) unsafe fn borrow_mut<'a, T: Handle>(p: *mut T) -> Result<&'a mut T> {
    check(p)?;
    // SAFETY: not NULL (checked), live and exclusively ours for the call by the caller's
    // contract.
    let r = unsafe { &mut *p };
    if r.magic() != T::MAGIC {
        return Err(bad_magic(p));
    }
    Ok(r)
}
