//! The boundary to native code: C for iOS (`mobile/ios/…/confab_push.h`),
//! JNI for Android (`app.confab.push.ConfabNative`). Strings cross as
//! UTF-8; every reply is JSON from [`crate::catch_up_json`], and nothing
//! here panics across the boundary.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::time::Duration;

/// `char *confab_catch_up(const char *profile_dir, const char *wake_json,
/// uint64_t budget_ms)`: blocks up to `budget_ms`; the reply is freed with
/// [`confab_string_free`]. Null arguments are answered with an error.
///
/// # Safety
/// `profile_dir` and `wake_json` are null or NUL-terminated strings that
/// stay valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn confab_catch_up(
    profile_dir: *const c_char,
    wake_json: *const c_char,
    budget_ms: u64,
) -> *mut c_char {
    // SAFETY: the caller passes NUL-terminated strings or null (checked).
    let text = |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    let reply = match (text(profile_dir), text(wake_json)) {
        (Some(profile), wake) => std::panic::catch_unwind(|| {
            crate::catch_up_json(Path::new(&profile), wake.as_deref().unwrap_or(""), Duration::from_millis(budget_ms))
        })
        .unwrap_or_else(|_| crate::error("internal", "the catch-up failed")),
        (None, _) => crate::error("invalid_input", "no profile directory"),
    };
    into_c(reply)
}

/// Frees a string [`confab_catch_up`] returned.
///
/// # Safety
/// `s` is null or a pointer `confab_catch_up` returned, freed only once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn confab_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in `into_c`, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

fn into_c(reply: String) -> *mut c_char {
    // JSON from serde never holds a NUL byte; stay safe if it ever did.
    CString::new(reply.replace('\0', "")).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// `external fun catchUp(profileDir: String, wake: String, budgetMs: Long): String`
/// of `app.confab.push.ConfabNative`.
#[cfg(target_os = "android")]
#[unsafe(no_mangle)]
pub extern "system" fn Java_app_confab_push_ConfabNative_catchUp<'local>(
    mut env: jni::JNIEnv<'local>,
    _class: jni::objects::JClass<'local>,
    profile_dir: jni::objects::JString<'local>,
    wake: jni::objects::JString<'local>,
    budget_ms: jni::sys::jlong,
) -> jni::sys::jstring {
    let profile: Option<String> = env.get_string(&profile_dir).ok().map(Into::into);
    let wake: String = env.get_string(&wake).ok().map(Into::into).unwrap_or_default();
    let budget = Duration::from_millis(u64::try_from(budget_ms).unwrap_or(0));
    let reply = match profile {
        Some(profile) => std::panic::catch_unwind(|| crate::catch_up_json(Path::new(&profile), &wake, budget))
            .unwrap_or_else(|_| crate::error("internal", "the catch-up failed")),
        None => crate::error("invalid_input", "no profile directory"),
    };
    env.new_string(reply).map_or(std::ptr::null_mut(), jni::objects::JString::into_raw)
}
