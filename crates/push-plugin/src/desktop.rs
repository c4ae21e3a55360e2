//! Desktops have no push target or system call UI here: the shell rings and
//! notifies itself, so every call is a no-op.

use crate::{Action, Event, IncomingCall, Push, Result};
use confab_protocol::{CallId, PushTarget};
use std::marker::PhantomData;
use std::path::PathBuf;
use tauri::plugin::PluginApi;
use tauri::{AppHandle, Runtime};

pub(crate) fn init<R: Runtime>(_app: &AppHandle<R>, _api: PluginApi<R, ()>) -> Phone<R> {
    Phone(PhantomData)
}

pub struct Phone<R: Runtime>(PhantomData<fn() -> R>);

impl<R: Runtime> Phone<R> {
    pub async fn pending_target(&self) -> Result<Option<PushTarget>> {
        Ok(None)
    }
    pub async fn take_actions(&self) -> Result<Vec<Action>> {
        Ok(Vec::new())
    }
    pub async fn incoming_call(&self, _call: &IncomingCall) -> Result<()> {
        Ok(())
    }
    pub async fn answer_call(&self, _call: CallId, _peer_name: &str) -> Result<()> {
        Ok(())
    }
    pub async fn end_call(&self, _call: CallId, _reason: crate::EndReason) -> Result<()> {
        Ok(())
    }
    pub async fn take_pushes(&self) -> Result<Vec<Push>> {
        Ok(Vec::new())
    }
    pub async fn finish_push(&self, _id: i64, _new_data: bool) -> Result<()> {
        Ok(())
    }
    pub async fn in_background(&self) -> Result<bool> {
        Ok(false)
    }
    pub fn shared_root(&self) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    pub fn listen(&self, _event: Event, _on: impl Fn() + Send + Sync + 'static) -> Result<()> {
        Ok(())
    }
}
