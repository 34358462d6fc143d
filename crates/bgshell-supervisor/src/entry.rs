//! The process's entry point. The binary is `#![no_main]`: std's start-up (`lang_start`) is
//! skipped, because for a process that lives a few milliseconds it is a fair part of its own
//! CPU (issue #15): it opens and reads /proc/self/maps to find the main thread's stack guard,
//! maps an alternate signal stack and installs SIGSEGV/SIGBUS handlers for its stack-overflow
//! message. What of it the supervisor relies on is done here: descriptors 0-2 open, SIGPIPE
//! ignored (a write to a closed pipe or socket is an error we handle, not our death; std resets
//! it for the command it spawns), a panic an exit with 101. `std::env::args` still works: on
//! glibc std takes the arguments in an `.init_array` hook, not in `lang_start`.

use std::ffi::{c_char, c_int};

#[no_mangle]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    open_standard_fds();
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    match std::panic::catch_unwind(super::run) {
        Ok(code) => code.into(),
        Err(_) => 101,
    }
}

/// Puts /dev/null on whichever of descriptors 0-2 is closed, as std's start-up does, so that no
/// file we open later lands there.
fn open_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: poll on our own array of three pollfd, without waiting.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for _ in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
        // SAFETY: opening a file; open takes the lowest free descriptor, so the closed ones
        // among 0-2 are filled in order.
        unsafe {
            libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        }
    }
}
