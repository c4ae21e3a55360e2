//! `confab call`, `confab answer` and `confab decline`: calls from scripts,
//! bots and test rigs, on the core's native engine. Audio comes from a WAV
//! file (`--play`) or the microphone, and goes to a WAV file (`--record`)
//! or the speaker.

use crate::output;
use anyhow::{anyhow, bail};
use confab_core::call::native::audio::{AudioInput, AudioOutput};
use confab_core::call::native::{NativeConfig, NativeEngine};
use confab_core::{CallPhase, CallView, Client, ClientEvent};
use confab_protocol::CallId;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(clap::Args, Clone)]
pub struct MediaArgs {
    /// Send this WAV file (played once, then silence) instead of the microphone.
    #[arg(long, value_name = "WAV")]
    play: Option<PathBuf>,
    /// Send silence instead of the microphone.
    #[arg(long, conflicts_with = "play")]
    silent: bool,
    /// Write what you hear to this WAV file (48 kHz mono) instead of the speaker.
    #[arg(long, value_name = "WAV")]
    record: Option<PathBuf>,
    /// The microphone to use, by name (see `confab sound-devices`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["play", "silent"])]
    mic: Option<String>,
    /// The speaker to use, by name (see `confab sound-devices`).
    #[arg(long, value_name = "NAME", conflicts_with = "record")]
    speaker: Option<String>,
    /// Hang up this long after the call connects (e.g. 10s, 500ms, 2m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Gather ICE candidates only on this local address (repeatable).
    #[arg(long, value_name = "IP", env = "CONFAB_MEDIA_BIND", value_delimiter = ',')]
    media_bind: Vec<IpAddr>,
    /// Send media only through TURN relays.
    #[arg(long, env = "CONFAB_RELAY_ONLY")]
    relay_only: bool,
    /// Print every phase, and the summary, as JSON lines.
    #[arg(long)]
    json: bool,
}

/// `confab sound-devices`: the names `--mic` and `--speaker` take.
pub fn sound_devices(json: bool) -> anyhow::Result<ExitCode> {
    let devices = confab_core::call::native::audio::list_devices()?;
    if json {
        println!("{}", serde_json::to_string(&devices)?);
    } else {
        for (what, names) in [("microphone", &devices.microphones), ("speaker", &devices.speakers)] {
            for name in names {
                println!("{what}\t{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit (ms, s, m, h)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl MediaArgs {
    pub fn engine(&self) -> NativeEngine {
        let input = match (&self.play, self.silent, &self.mic) {
            (Some(p), _, _) => AudioInput::Wav(p.clone()),
            (None, true, _) => AudioInput::Silence,
            (None, false, Some(name)) => AudioInput::NamedDevice(name.clone()),
            (None, false, None) => AudioInput::Device,
        };
        let output = match (&self.record, &self.speaker) {
            (Some(p), _) => AudioOutput::Wav(p.clone()),
            (None, Some(name)) => AudioOutput::NamedDevice(name.clone()),
            (None, None) => AudioOutput::Device,
        };
        let mut config = NativeConfig { input, output, relay_only: self.relay_only, ..NativeConfig::default() };
        if !self.media_bind.is_empty() {
            config.bind = self.media_bind.clone();
        }
        NativeEngine::new(config)
    }
}

/// Waits for this device's next call view about `call` (any call when
/// `None`), printing each.
async fn next_view(
    events: &mut broadcast::Receiver<ClientEvent>,
    call: Option<CallId>,
    json: bool,
) -> anyhow::Result<CallView> {
    loop {
        match events.recv().await {
            Ok(ClientEvent::Call { call: view }) if call.is_none_or(|c| c == view.call) => {
                output::call_view(&view, json);
                return Ok(view);
            }
            Ok(ClientEvent::Connection { state: confab_core::ConnectionState::SignedOut }) => {
                bail!("your session has expired or was signed out; run `confab login`")
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => bail!("the client stopped"),
        }
    }
}

/// Follows a call until it ends: hangs up after `duration` once connected,
/// or on Ctrl-C / SIGTERM. Prints the summary; exit status 0 when the call
/// connected.
async fn follow(
    client: &Client,
    events: &mut broadcast::Receiver<ClientEvent>,
    call: CallId,
    args: &MediaArgs,
    engine: &NativeEngine,
) -> anyhow::Result<ExitCode> {
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    let mut connected = false;
    let ended = loop {
        let wait_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            view = next_view(events, Some(call), args.json) => {
                let view = view?;
                match &view.phase {
                    CallPhase::Active { .. } => {
                        connected = true;
                        if deadline.is_none() {
                            deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
                        }
                    }
                    CallPhase::Ended { .. } => break view,
                    _ => {}
                }
            }
            _ = wait_deadline => {
                deadline = None;
                client.hang_up(call).await?;
            }
            _ = &mut stop => {
                client.hang_up(call).await?;
            }
        }
    };
    let CallPhase::Ended { reason, duration_ms, error } = &ended.phase else { unreachable!() };
    // The session of this call (none if it never got to media).
    let stats = Some(engine.stats()).filter(|s| s.call == Some(call)).unwrap_or_default();
    let summary = serde_json::json!({
        "type": "call_summary",
        "call": call,
        "peer": ended.peer_name,
        "reason": reason,
        "duration_ms": duration_ms,
        "error": error,
        "audio_frames_sent": stats.audio_frames_sent.load(Ordering::Relaxed),
        "audio_frames_decoded": stats.audio_frames_decoded.load(Ordering::Relaxed),
        "video_packets_received": stats.video_packets_received.load(Ordering::Relaxed),
        "first_audio_ms": stats.first_audio_ms.load(Ordering::Relaxed),
    });
    if args.json {
        output::line(&summary.to_string());
    } else {
        eprintln!("sent {} and heard {} audio frames", summary["audio_frames_sent"], summary["audio_frames_decoded"]);
    }
    // Let the hangup leave before the process exits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(if connected && error.is_none() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn call(client: Client, username: &str, video: bool, args: MediaArgs) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(args.engine());
    let client = client.with_media_engine(engine.clone());
    let mut events = client.subscribe();
    crate::start(&client).await?;
    let conversation = client.open_direct(username).await?;
    let call = client.call(conversation, video).await?;
    let code = follow(&client, &mut events, call, &args, &engine).await;
    client.stop().await;
    code
}

pub async fn answer(client: Client, wait: Duration, args: MediaArgs) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(args.engine());
    let client = client.with_media_engine(engine.clone());
    let mut events = client.subscribe();
    crate::start(&client).await?;
    let call = ringing(&client, &mut events, wait, args.json).await?;
    client.accept_call(call).await?;
    let code = follow(&client, &mut events, call, &args, &engine).await;
    client.stop().await;
    code
}

pub async fn decline(client: Client, wait: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let mut events = client.subscribe();
    crate::start(&client).await?;
    let call = ringing(&client, &mut events, wait, json).await?;
    client.decline_call(call).await?;
    next_view(&mut events, Some(call), json).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The call ringing here now, or the next one to ring within `wait`.
async fn ringing(
    client: &Client,
    events: &mut broadcast::Receiver<ClientEvent>,
    wait: Duration,
    json: bool,
) -> anyhow::Result<CallId> {
    if let Some(view) = client.current_call().await? {
        if view.phase == CallPhase::Ringing {
            output::call_view(&view, json);
            return Ok(view.call);
        }
    }
    tokio::time::timeout(wait, async {
        loop {
            let view = next_view(events, None, json).await?;
            if view.phase == CallPhase::Ringing {
                return Ok::<_, anyhow::Error>(view.call);
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no call rang within {:.0} s", wait.as_secs_f64()))?
}

pub fn parse_wait(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999s").is_err());
    }
}
