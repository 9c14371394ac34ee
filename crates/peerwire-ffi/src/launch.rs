//! The launcher's side of session tokens: mint one with the device secret, start the client
//! process with it (`spawn_with_token`); and the process hardening both ends use.

use std::ffi::{CString, c_char};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use peerwire_security::token::{Binding, DeviceSecret, Minter};

use crate::peerwire_status::{self, *};
use crate::{Error, boundary, raw};

/// Starts `argv[0]` (a path; `PATH` is not searched) with the arguments `argv[1..argc]`, passing
/// `token` on an inherited descriptor that only the child holds (the client reads it with
/// `peerwire_client_options_token_from_launcher`); the token never appears in its arguments or
/// environment. `*pid` is the child's pid: the caller reaps it (`waitpid`).
///
/// # Safety
/// `argv` points to `argc` NUL-terminated strings; `token` is a NUL-terminated string; `pid` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_spawn_with_token(
    argv: *const *const c_char,
    argc: usize,
    token: *const c_char,
    pid: *mut i32,
) -> peerwire_status {
    boundary("peerwire_spawn_with_token", || {
        // SAFETY: `argc` NUL-terminated strings (this function's contract).
        let args = unsafe { raw::strs(argv, argc, "argv") }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let token = unsafe { raw::str(token, "token") }?;
        raw::out_ok(pid, "pid")?;
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| Error::invalid("argv is empty"))?;
        let mut cmd = Command::new(program);
        cmd.args(rest);
        let child = peerwire_security::launch::spawn_with_token(&mut cmd, token)
            .map_err(|e| Error::new(PEERWIRE_IO, format!("starting {program}: {e}")))?;
        let id = i32::try_from(child.id())
            .map_err(|_| Error::new(PEERWIRE_INTERNAL, "pid out of range"))?;
        // The child is the caller's to reap: dropping `Child` neither kills nor waits.
        drop(child);
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(pid, id) };
        Ok(())
    })
}

/// Mints a one-time session token with the device secret at `secret_path` (the identity
/// directory's `server/token.key`), for a client running as `uid`, optionally only as the
/// executable `exe` (NULL: any), for the server at `socket_path`, valid `ttl_seconds` (capped at
/// the library's maximum). `*token` is a new string the caller frees with
/// `peerwire_string_free` (it is zeroized then).
///
/// # Safety
/// `secret_path` and `socket_path` are NUL-terminated strings; `exe` is NULL or one; `token` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_token_mint(
    secret_path: *const c_char,
    uid: u32,
    exe: *const c_char,
    socket_path: *const c_char,
    ttl_seconds: u64,
    token: *mut *mut c_char,
) -> peerwire_status {
    boundary("peerwire_token_mint", || {
        // SAFETY: a NUL-terminated string (this function's contract).
        let secret = unsafe { raw::str(secret_path, "secret_path") }?;
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let exe = unsafe { raw::opt_str(exe, "exe") }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let socket = unsafe { raw::str(socket_path, "socket_path") }?;
        raw::out_ok(token, "token")?;
        let config = |e: &dyn std::fmt::Display| Error::new(PEERWIRE_CONFIG, e.to_string());
        let secret = DeviceSecret::read(secret.as_ref()).map_err(|e| config(&e))?;
        let minted = Minter::new(&secret)
            .and_then(|m| {
                m.mint(
                    &Binding {
                        uid,
                        exe: exe.map(PathBuf::from),
                        socket: PathBuf::from(socket),
                    },
                    Duration::from_secs(ttl_seconds),
                )
            })
            .map_err(|e| config(&e))?;
        let minted = zeroize::Zeroizing::new(minted);
        let c = CString::new(minted.as_bytes())
            .map_err(|_| Error::new(PEERWIRE_INTERNAL, "token with a NUL byte"))?;
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(token, c.into_raw()) };
        Ok(())
    })
}

/// Frees (and zeroizes) a string the library returned (`peerwire_token_mint`). NULL does
/// nothing.
///
/// # Safety
/// `s` is NULL or a string this library returned, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_string_free(s: *mut c_char) -> peerwire_status {
    boundary("peerwire_string_free", || {
        if s.is_null() {
            return Ok(());
        }
        // SAFETY: made by `CString::into_raw` in this library and given back once (contract).
        let c = unsafe { CString::from_raw(s) };
        let mut bytes = c.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(())
    })
}

/// Hardens the process as `peerwire serve` does: no core dumps, not dumpable (no same-uid
/// ptrace or /proc/PID/mem), memory locked where allowed. Call it first thing in `main`.
#[unsafe(no_mangle)]
pub extern "C" fn peerwire_harden_process() -> peerwire_status {
    boundary("peerwire_harden_process", || {
        peerwire_security::privilege::harden_process()
            .map(drop)
            .map_err(|e| Error::new(PEERWIRE_PERMISSION, e.to_string()))
    })
}
