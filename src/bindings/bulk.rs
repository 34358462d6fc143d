//! Snapshots of many tasks at once (`list`, `replay`: thousands after a while). Two costs that
//! are small for one task dominate for thousands, and are paid once here instead: the output
//! sizes of a session's tasks come from one listing of its directory (not two `lstat`s of full
//! paths per task), and the objects reach JavaScript as one JSON text that the engine's
//! `JSON.parse` turns into objects (not napi's property write per field per task).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use napi::bindgen_prelude::*;

use super::objects::{file_size, snapshot_at, TaskSnapshot};
use crate::manager::Manager;
use crate::store::TaskRecord;

/// A session with at least this many of the records has its directory listed once for output
/// sizes; fewer are `lstat`ed one by one.
const LIST_FROM: usize = 32;

/// The snapshots as JSON, for `ToNapiValue`. A JavaScript array of the very objects
/// `TaskSnapshot`'s own conversion gives (same names, a `None` left out), as
/// __test__/store.test.mjs checks.
pub struct SnapshotList(String);

/// A session's directory, and its output sizes when it was listed for them.
struct SessionDir {
    dir: PathBuf,
    sizes: Option<HashMap<String, u64>>,
}

pub(super) fn snapshots(m: &Manager, recs: Vec<TaskRecord>) -> SnapshotList {
    let mut per_session: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        *per_session.entry(&r.session_id).or_default() += 1;
    }
    let mut dirs: HashMap<String, Option<SessionDir>> = HashMap::new();
    for r in &recs {
        if dirs.contains_key(&r.session_id) {
            continue;
        }
        let many = per_session.get(r.session_id.as_str()).is_some_and(|n| *n >= LIST_FROM);
        let found = m.paths(r).ok().map(|p| SessionDir { sizes: many.then(|| crate::store::output_sizes(&p.dir)), dir: p.dir });
        dirs.insert(r.session_id.clone(), found);
    }
    let list: Vec<TaskSnapshot> = recs
        .into_iter()
        .map(|rec| {
            let found = dirs.get(&rec.session_id).and_then(Option::as_ref);
            let paths = found.map(|d| crate::store::paths_in(&d.dir, &rec.task_id));
            let listed = found.and_then(|d| d.sizes.as_ref());
            snapshot_at(rec, paths, |p: &Path| match listed {
                Some(sizes) => p.file_name().and_then(|n| n.to_str()).and_then(|n| sizes.get(n).copied()),
                None => file_size(p),
            })
        })
        .collect();
    // Cannot fail: strings, numbers and booleans only (an empty text would make JSON.parse throw
    // rather than anything be lost silently).
    SnapshotList(serde_json::to_string(&list).unwrap_or_default())
}

impl ToNapiValue for SnapshotList {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let text = val.0;
        let mut js_text = std::ptr::null_mut();
        let mut global = std::ptr::null_mut();
        let mut json = std::ptr::null_mut();
        let mut parse = std::ptr::null_mut();
        let mut out = std::ptr::null_mut();
        // SAFETY: called by napi on the JS thread with a live env; every pointer handed over is
        // either `text`'s bytes (alive for the call; the engine copies them) or an out-pointer to
        // a local. An ASCII text (the usual case) is made a one-byte string without decoding.
        unsafe {
            let (ptr, len) = (text.as_ptr().cast(), text.len() as isize);
            let made = if text.is_ascii() {
                sys::napi_create_string_latin1(env, ptr, len, &mut js_text)
            } else {
                sys::napi_create_string_utf8(env, ptr, len, &mut js_text)
            };
            check_status!(made, "could not make the snapshots' text")?;
            check_status!(sys::napi_get_global(env, &mut global))?;
            check_status!(sys::napi_get_named_property(env, global, c"JSON".as_ptr(), &mut json))?;
            check_status!(sys::napi_get_named_property(env, json, c"parse".as_ptr(), &mut parse))?;
            check_status!(sys::napi_call_function(env, json, parse, 1, &js_text, &mut out), "JSON.parse of the snapshots failed")?;
        }
        Ok(out)
    }
}
