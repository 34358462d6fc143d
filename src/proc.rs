//! Exit notification on the manager side: waiting for a process to exit on the runtime (no
//! polling, no SIGCHLD handler to fight libuv or Bun over). The identity rules (which process a
//! record means, which group may be signalled) are shared with the supervisor and live in
//! `bgshell_common::proc`, re-exported here so that `crate::proc::…` names all of it.

use std::io;

use bgshell_sys::ProcessHandle;

pub use bgshell_common::proc::*;

/// Resolves when the process behind `handle` has exited. Readiness comes from the runtime's
/// reactor; nothing ticks.
pub async fn exited(handle: ProcessHandle) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the handle, so its descriptor stays open and the same for as long
    // as it is registered.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(handle, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// Waits while `alive()` says the process behind `pid` is still the one meant: by a process
/// handle (opened first, so the pid is pinned when `alive()` checks it); by a slow check only when
/// none can be opened (no descriptor left), the only option then without being its parent.
async fn wait_while(pid: u32, alive: impl Fn() -> bool) {
    match ProcessHandle::open(pid) {
        Ok(handle) if alive() => {
            let _ = exited(handle).await;
        }
        Ok(_) => {}
        Err(_) => {
            while alive() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits for our own child `pid` to exit (it cannot be reused before we reap it).
pub async fn wait_gone(pid: u32) {
    wait_while(pid, || is_same_process(pid, None)).await
}

/// Waits until the recorded process is gone (at once when it is not, or is not the recorded one).
pub async fn wait_identity_gone(id: &Identity) {
    wait_while(id.pid, || id.is_alive()).await
}

/// Waits for our own child to exit, then reaps it so no zombie is left behind.
pub async fn reap_child(pid: u32) {
    wait_gone(pid).await;
    reap(pid);
}
