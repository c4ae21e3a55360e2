//! The native media engine: WebRTC from the `webrtc` crate (0.21, on the
//! sans-I/O `rtc` core), Opus through the system libopus, and audio from
//! [`audio`] (devices through cpal, or WAV files). It is what Linux
//! desktops use, since WebKitGTK has no `RTCPeerConnection`, and what the
//! CLI and bots use. It speaks standard WebRTC (ICE, DTLS-SRTP, Opus at
//! payload type 111), so browsers and the phones' webviews can call it.
//!
//! Audio only is sent. In a video call it also receives the other side's
//! video (VP8) and counts its packets, so a browser's camera can be shown to
//! reach a Linux peer; there is no decoder or renderer yet.
//!
//! When this side answers, it takes the DTLS *server* role, and its ICE
//! checks run every 20 ms: `rtc` 0.21 advances the DTLS handshake on its
//! timer, so with the defaults a call waits about 200 ms for media after
//! ICE connects (see `benches/call.rs` and `docs/performance.md`).

pub mod audio;

use super::engine::{MediaEngine, MediaEvent, MediaEvents, MediaParams, MediaSession};
use crate::{Error, Result};
use audio::{AudioInput, AudioOutput, AudioSink, AudioSource, FRAME};
use confab_protocol::{CallSignal, IceServer};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine as RtcMediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// How the native engine is set up on this device.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    pub input: AudioInput,
    pub output: AudioOutput,
    /// Local addresses to gather candidates on (port 0 each). The
    /// unspecified address means every interface.
    pub bind: Vec<IpAddr>,
    /// Only relay candidates (through TURN): hides this device's address
    /// from the other side, at the cost of a relay hop.
    pub relay_only: bool,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            input: AudioInput::Device,
            output: AudioOutput::Device,
            bind: vec![IpAddr::from([0, 0, 0, 0])],
            relay_only: false,
        }
    }
}

/// What one session did, for the CLI's summary, tests and benchmarks.
#[derive(Debug, Default)]
pub struct NativeStats {
    pub call: Option<confab_protocol::CallId>,
    pub audio_frames_sent: AtomicU64,
    pub audio_frames_decoded: AtomicU64,
    pub video_packets_received: AtomicU64,
    /// Milliseconds from the session's start to the first decoded frame.
    pub first_audio_ms: AtomicU64,
}

pub struct NativeEngine {
    config: NativeConfig,
    /// What calls use: the config's at first, then [`NativeEngine::use_devices`].
    devices: Mutex<(AudioInput, AudioOutput)>,
    /// The running session's audio ends, to switch devices mid-call.
    live: Mutex<Option<LiveAudio>>,
    /// The latest session's.
    stats: Mutex<Arc<NativeStats>>,
}

type SharedSource = Arc<Mutex<Box<dyn AudioSource>>>;
type SharedSink = Arc<Mutex<Box<dyn AudioSink>>>;

struct LiveAudio {
    source: std::sync::Weak<Mutex<Box<dyn AudioSource>>>,
    sink: std::sync::Weak<Mutex<Box<dyn AudioSink>>>,
}

impl NativeEngine {
    pub fn new(config: NativeConfig) -> NativeEngine {
        let devices = Mutex::new((config.input.clone(), config.output.clone()));
        NativeEngine { config, devices, live: Mutex::default(), stats: Mutex::default() }
    }

    /// The microphone and speaker calls use.
    pub fn devices(&self) -> (AudioInput, AudioOutput) {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The microphone and speaker from now on, in a running call too. Both
    /// open before either is switched: if one cannot, nothing changes.
    pub fn use_devices(&self, input: AudioInput, output: AudioOutput) -> Result<()> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let running = live.as_ref().and_then(|l| Some((l.source.upgrade()?, l.sink.upgrade()?)));
        if let Some((source, sink)) = running {
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let new_source = (devices.0 != input).then(|| audio::open_source(&input)).transpose()?;
            let new_sink = (devices.1 != output).then(|| audio::open_sink(&output)).transpose()?;
            if let Some(new) = new_source {
                *source.lock().unwrap_or_else(|e| e.into_inner()) = new;
            }
            if let Some(new) = new_sink {
                let mut old = std::mem::replace(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()), new);
                let _ = old.finish();
            }
            *devices = (input, output);
        } else {
            *self.devices.lock().unwrap_or_else(|e| e.into_inner()) = (input, output);
        }
        Ok(())
    }

    /// The latest session's statistics (`call` says which).
    pub fn stats(&self) -> Arc<NativeStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn rtc_error(what: &str) -> impl Fn(webrtc::error::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn media_engine() -> Result<(RtcMediaEngine, Registry)> {
    let mut media = RtcMediaEngine::default();
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: opus(), payload_type: OPUS_PT }, RtpCodecKind::Audio)
        .map_err(rtc_error("opus"))?;
    let vp8 = RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    media
        .register_codec(RTCRtpCodecParameters { rtp_codec: vp8, payload_type: VP8_PT }, RtpCodecKind::Video)
        .map_err(rtc_error("vp8"))?;
    let registry = webrtc::peer_connection::register_default_interceptors(Registry::new(), &mut media)
        .map_err(rtc_error("interceptors"))?;
    Ok((media, registry))
}

fn ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// Turns the peer connection's callbacks into [`MediaEvent`]s.
struct Handler {
    events: MediaEvents,
    connected: watch::Sender<bool>,
    sink: Arc<Mutex<Box<dyn AudioSink>>>,
    stats: Arc<NativeStats>,
    started: Instant,
    first_audio: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let signal = CallSignal::Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_m_line_index: init.sdp_mline_index,
                };
                let _ = self.events.try_send(MediaEvent::Signal(signal));
            }
            Err(e) => tracing::debug!(%e, "skipping a local candidate"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "call media");
        let event = match state {
            RTCPeerConnectionState::Connected => {
                let _ = self.connected.send(true);
                MediaEvent::Connected
            }
            RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed => {
                let _ = self.connected.send(false);
                MediaEvent::Lost
            }
            _ => return,
        };
        let _ = self.events.try_send(event);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = track.kind().await;
        let stats = self.stats.clone();
        if kind == RtpCodecKind::Video {
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    match event {
                        TrackRemoteEvent::OnRtpPacket(_) => {
                            stats.video_packets_received.fetch_add(1, Ordering::Relaxed);
                        }
                        TrackRemoteEvent::OnEnded => break,
                        _ => {}
                    }
                }
            });
            return;
        }
        let sink = self.sink.clone();
        let events = self.events.clone();
        let (started, first) = (self.started, self.first_audio.clone());
        tokio::spawn(async move {
            let mut decoder = match opus::Decoder::new(audio::SAMPLE_RATE, opus::Channels::Mono) {
                Ok(d) => d,
                Err(e) => {
                    let _ = events.try_send(MediaEvent::Failed(format!("opus decoder: {e}")));
                    return;
                }
            };
            // 120 ms: the longest Opus frame.
            let mut pcm = vec![0i16; 5760];
            let mut last_seq: Option<u16> = None;
            while let Some(event) = track.poll().await {
                let packet = match event {
                    TrackRemoteEvent::OnRtpPacket(p) => p,
                    TrackRemoteEvent::OnEnded => break,
                    _ => continue,
                };
                let seq = packet.header.sequence_number;
                // Conceal a few lost packets; a longer gap is just skipped.
                if let Some(prev) = last_seq {
                    let gap = seq.wrapping_sub(prev);
                    if gap == 0 || gap > 0x8000 {
                        continue; // a duplicate or a late packet
                    }
                    for _ in 1..gap.min(4) {
                        if let Ok(n) = decoder.decode(&[], &mut pcm[..FRAME], false) {
                            let _ = sink.lock().unwrap_or_else(|e| e.into_inner()).write(&pcm[..n]);
                        }
                    }
                }
                last_seq = Some(seq);
                let n = match decoder.decode(&packet.payload, &mut pcm, false) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(%e, "skipping an undecodable audio packet");
                        continue;
                    }
                };
                if let Err(e) = sink.lock().unwrap_or_else(|e| e.into_inner()).write(&pcm[..n]) {
                    let _ = events.try_send(MediaEvent::Failed(e.to_string()));
                    return;
                }
                stats.audio_frames_decoded.fetch_add(1, Ordering::Relaxed);
                if !first.swap(true, Ordering::Relaxed) {
                    stats.first_audio_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    let _ = events.try_send(MediaEvent::FirstAudio);
                }
            }
        });
    }
}

struct NativeSession {
    pc: Arc<dyn PeerConnection>,
    events: MediaEvents,
    offerer: bool,
    /// Candidates that came before the remote description.
    pending: Vec<RTCIceCandidateInit>,
    sink: Arc<Mutex<Box<dyn AudioSink>>>,
    sender: tokio::task::JoinHandle<()>,
    /// The microphone is muted: frames of silence go out instead.
    muted: Arc<AtomicBool>,
    stopped: bool,
}

#[async_trait::async_trait]
impl MediaEngine for NativeEngine {
    async fn start(&self, params: MediaParams, events: MediaEvents) -> Result<Box<dyn MediaSession>> {
        let started = Instant::now();
        let stats = Arc::new(NativeStats { call: Some(params.call), ..NativeStats::default() });
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
        // Devices first: a missing microphone is the user's error to see
        // before anything rings on the network.
        let (input, output) = self.devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let source: SharedSource = Arc::new(Mutex::new(audio::open_source(&input)?));
        let sink: SharedSink = Arc::new(Mutex::new(audio::open_sink(&output)?));
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(LiveAudio { source: Arc::downgrade(&source), sink: Arc::downgrade(&sink) });
        let (media, registry) = media_engine()?;
        let loopback_only = self.config.bind.iter().all(|a| a.is_loopback());
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Server)
            // No mDNS: candidates carry plain addresses (our signaling is
            // private to the call anyway), and without it a host with only
            // loopback gathers nothing.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(loopback_only)
            // Connectivity checks every 20 ms instead of 200 (as long in all:
            // 70 tries). rtc 0.21 moves DTLS on at the ICE agent's timer, so
            // its check interval is what a call waits for media after ICE
            // connects: ~200 ms by default, ~20 ms like this.
            .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(70))
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers(&params.ice_servers))
            .with_ice_transport_policy(if self.config.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();
        let (connected_tx, connected_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            events: events.clone(),
            connected: connected_tx,
            sink: sink.clone(),
            stats: stats.clone(),
            started,
            first_audio: Arc::default(),
        });
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(config)
                .with_setting_engine(settings)
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_handler(handler)
                .with_udp_addrs(self.config.bind.iter().map(|ip| std::net::SocketAddr::new(*ip, 0)).collect())
                .build()
                .await
                .map_err(rtc_error("cannot set up WebRTC"))?,
        );
        let ssrc = rand::random::<u32>();
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    format!("confab-{}", params.call),
                    "audio".to_owned(),
                    "microphone".to_owned(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                        codec: opus(),
                        ..Default::default()
                    }],
                ),
            )
            .map_err(rtc_error("audio track"))?,
        );
        pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(rtc_error("audio track"))?;
        if params.video && params.offerer {
            // Receive the other side's camera; nothing to send yet.
            let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
            pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(init)).await.map_err(rtc_error("video"))?;
        }
        let muted = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(send_audio(source, track, ssrc, connected_rx, muted.clone(), stats));
        let mut session = NativeSession {
            pc,
            events,
            offerer: params.offerer,
            pending: Vec::new(),
            sink,
            sender,
            muted,
            stopped: false,
        };
        if params.offerer {
            session.offer().await?;
        }
        Ok(Box::new(session))
    }
}

/// Encodes a frame every 20 ms once media flows.
async fn send_audio(
    source: SharedSource,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    mut connected: watch::Receiver<bool>,
    muted: Arc<AtomicBool>,
    stats: Arc<NativeStats>,
) {
    let mut encoder = match opus::Encoder::new(audio::SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%e, "no opus encoder");
            return;
        }
    };
    let mut frame = [0i16; FRAME];
    let mut packet = vec![0u8; 1500];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if connected.wait_for(|c| *c).await.is_err() {
            return;
        }
        tick.tick().await;
        if !*connected.borrow() {
            continue;
        }
        // The device is read even when muted, so unmuting sends what is
        // said now rather than what queued up meanwhile.
        source.lock().unwrap_or_else(|e| e.into_inner()).read(&mut frame);
        if muted.load(Ordering::Relaxed) {
            frame.fill(0);
        }
        let n = match encoder.encode(&frame, &mut packet) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%e, "opus encode");
                continue;
            }
        };
        let sample = rtc::media::Sample {
            data: packet[..n].to_vec().into(),
            duration: Duration::from_millis(20),
            ..rtc::media::Sample::new(Instant::now())
        };
        if let Err(e) = track.sample_writer(ssrc, OPUS_PT).write_sample(&sample).await {
            tracing::debug!(%e, "audio frame not sent");
            continue;
        }
        stats.audio_frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

impl NativeSession {
    async fn offer(&mut self) -> Result<()> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_error("offer"))?;
        self.pc.set_local_description(offer).await.map_err(rtc_error("offer"))?;
        let sdp = self.pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
        self.emit(MediaEvent::Signal(CallSignal::Offer { sdp }))
    }

    fn emit(&self, event: MediaEvent) -> Result<()> {
        self.events.try_send(event).map_err(|_| Error::Invalid("call events are not being read".into()))
    }

    async fn flush_candidates(&mut self) {
        for c in std::mem::take(&mut self.pending) {
            if let Err(e) = self.pc.add_ice_candidate(c).await {
                tracing::debug!(%e, "skipping a remote candidate");
            }
        }
    }
}

#[async_trait::async_trait]
impl MediaSession for NativeSession {
    async fn signal(&mut self, signal: CallSignal) -> Result<()> {
        match signal {
            CallSignal::Offer { sdp } => {
                if self.offerer {
                    return Err(Error::Invalid("an offer to the side that offers".into()));
                }
                let offer = RTCSessionDescription::offer(sdp).map_err(rtc_error("their offer"))?;
                self.pc.set_remote_description(offer).await.map_err(rtc_error("their offer"))?;
                let answer = self.pc.create_answer(None).await.map_err(rtc_error("answer"))?;
                self.pc.set_local_description(answer).await.map_err(rtc_error("answer"))?;
                let sdp = self.pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
                self.emit(MediaEvent::Signal(CallSignal::Answer { sdp }))?;
                self.flush_candidates().await;
            }
            CallSignal::Answer { sdp } => {
                let answer = RTCSessionDescription::answer(sdp).map_err(rtc_error("their answer"))?;
                self.pc.set_remote_description(answer).await.map_err(rtc_error("their answer"))?;
                self.flush_candidates().await;
            }
            CallSignal::Candidate { candidate, sdp_mid, sdp_m_line_index } => {
                // An empty candidate is the end of their candidates.
                if candidate.is_empty() {
                    return Ok(());
                }
                let init =
                    RTCIceCandidateInit { candidate, sdp_mid, sdp_mline_index: sdp_m_line_index, ..Default::default() };
                if self.pc.remote_description().await.is_some() {
                    if let Err(e) = self.pc.add_ice_candidate(init).await {
                        tracing::debug!(%e, "skipping a remote candidate");
                    }
                } else if self.pending.len() < 64 {
                    self.pending.push(init);
                }
            }
        }
        Ok(())
    }

    async fn set_muted(&mut self, muted: bool) -> Result<()> {
        self.muted.store(muted, Ordering::Relaxed);
        Ok(())
    }

    async fn restart_ice(&mut self) -> Result<()> {
        if !self.offerer {
            return Ok(());
        }
        self.pc.restart_ice().await.map_err(rtc_error("ICE restart"))?;
        self.offer().await
    }

    async fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.sender.abort();
        if let Err(e) = self.pc.close().await {
            tracing::debug!(%e, "closing the peer connection");
        }
        if let Err(e) = self.sink.lock().unwrap_or_else(|e| e.into_inner()).finish() {
            tracing::warn!(%e, "could not finish the recording");
        }
    }
}

impl Drop for NativeSession {
    fn drop(&mut self) {
        self.sender.abort();
        let _ = self.sink.lock().unwrap_or_else(|e| e.into_inner()).finish();
    }
}
