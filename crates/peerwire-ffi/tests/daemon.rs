//! The privileged start-up through the C ABI, in a process of its own (it hardens this test
//! process). CI runs as root: without a service user and without allow_root, root is refused
//! and nothing is done; as another user the process carries on unprivileged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use peerwire::peerwire_status::*;
use peerwire::*;

#[test]
fn root_without_a_service_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = std::ffi::CString::new(dir.path().join("run/d.sock").to_str().unwrap()).unwrap();
    let mut info = peerwire_daemon_info::default();
    let s = unsafe {
        peerwire_daemon_start(sock.as_ptr(), null(), null(), 0, null(), false, &mut info)
    };
    let message = unsafe { CStr::from_ptr(peerwire_last_error()) }
        .to_string_lossy()
        .into_owned();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(s, PEERWIRE_PERMISSION, "{message}");
        assert!(message.contains("refusing to run as root"), "{message}");
        assert!(!dir.path().join("run").exists(), "nothing was done");
        // A user that does not exist is a configuration error.
        let s = unsafe {
            peerwire_daemon_start(
                sock.as_ptr(),
                c"no-such-user-pw".as_ptr(),
                null(),
                0,
                null(),
                false,
                null_mut(),
            )
        };
        assert_eq!(s, PEERWIRE_CONFIG);
    } else {
        assert_eq!(s, PEERWIRE_OK, "{message}");
        assert!(!info.dropped && !info.root);
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
    }
}
