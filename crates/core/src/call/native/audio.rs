//! Where the native engine's audio comes from and goes to: 20 ms frames of
//! 48 kHz mono, the unit Opus encodes. Sources and sinks are files (WAV,
//! for scripts, bots and tests), silence, or real devices through `cpal`.

use crate::{Error, Result};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME: usize = 960;

/// What a call sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AudioInput {
    /// Nothing: silence (a listen-only bot).
    Silence,
    /// A WAV file, played once from the start of the call, then silence.
    Wav(PathBuf),
    /// A capture device: the system default, or the one whose name
    /// contains this text.
    #[default]
    Device,
    NamedDevice(String),
}

/// What a call does with what it hears.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AudioOutput {
    Discard,
    /// A 48 kHz mono WAV file of everything decoded, in arrival order.
    Wav(PathBuf),
    #[default]
    Device,
    NamedDevice(String),
}

pub use crate::call::AudioDevices;

/// Lists the capture and playback devices (it can take a moment: some
/// hosts probe each device).
pub fn list_devices() -> Result<AudioDevices> {
    device::list()
}

/// Produces one frame at a time; called every 20 ms.
pub trait AudioSource: Send + 'static {
    fn read(&mut self, frame: &mut [i16; FRAME]);
}

/// Takes decoded frames.
pub trait AudioSink: Send + 'static {
    fn write(&mut self, frame: &[i16]) -> Result<()>;
    /// Flushes what is buffered (a file's header and tail).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn open_source(input: &AudioInput) -> Result<Box<dyn AudioSource>> {
    Ok(match input {
        AudioInput::Silence => Box::new(Silence),
        AudioInput::Wav(path) => Box::new(WavSource::open(path)?),
        AudioInput::Device => Box::new(device::Capture::open(None)?),
        AudioInput::NamedDevice(name) => Box::new(device::Capture::open(Some(name))?),
    })
}

pub(crate) fn open_sink(output: &AudioOutput) -> Result<Box<dyn AudioSink>> {
    Ok(match output {
        AudioOutput::Discard => Box::new(Discard),
        AudioOutput::Wav(path) => Box::new(WavSink::create(path)?),
        AudioOutput::Device => Box::new(device::Playback::open(None)?),
        AudioOutput::NamedDevice(name) => Box::new(device::Playback::open(Some(name))?),
    })
}

struct Silence;

impl AudioSource for Silence {
    fn read(&mut self, frame: &mut [i16; FRAME]) {
        frame.fill(0);
    }
}

struct Discard;

impl AudioSink for Discard {
    fn write(&mut self, _: &[i16]) -> Result<()> {
        Ok(())
    }
}

fn wav_error(path: &std::path::Path, e: hound::Error) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// A whole WAV file, decoded up front to 48 kHz mono.
pub struct WavSource {
    samples: Vec<i16>,
    at: usize,
}

impl WavSource {
    /// Longer files are refused rather than read into memory.
    const MAX_SECONDS: usize = 3600;

    pub fn open(path: &std::path::Path) -> Result<WavSource> {
        let reader = hound::WavReader::open(path).map_err(|e| wav_error(path, e))?;
        let spec = reader.spec();
        let channels = usize::from(spec.channels.max(1));
        if reader.duration() as usize > Self::MAX_SECONDS * spec.sample_rate as usize {
            return Err(Error::Invalid(format!("{}: longer than an hour", path.display())));
        }
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => {
                reader.into_samples::<f32>().collect::<std::result::Result<_, _>>().map_err(|e| wav_error(path, e))?
            }
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f32 * scale))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| wav_error(path, e))?
            }
        };
        let mono: Vec<f32> = interleaved.chunks(channels).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
        let samples = resample(&mono, spec.sample_rate, SAMPLE_RATE).into_iter().map(to_i16).collect();
        Ok(WavSource { samples, at: 0 })
    }
}

impl AudioSource for WavSource {
    fn read(&mut self, frame: &mut [i16; FRAME]) {
        let rest = &self.samples[self.at.min(self.samples.len())..];
        let n = rest.len().min(FRAME);
        frame[..n].copy_from_slice(&rest[..n]);
        frame[n..].fill(0);
        self.at += n;
    }
}

pub struct WavSink {
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
}

impl WavSink {
    pub fn create(path: &std::path::Path) -> Result<WavSink> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| wav_error(path, e))?;
        Ok(WavSink { writer: Some(writer), path: path.to_owned() })
    }
}

impl AudioSink for WavSink {
    fn write(&mut self, frame: &[i16]) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let mut w = writer.get_i16_writer(frame.len() as u32);
        for s in frame {
            w.write_sample(*s);
        }
        w.flush().map_err(|e| wav_error(&self.path, e))
    }

    fn finish(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.finalize().map_err(|e| wav_error(&self.path, e)),
            None => Ok(()),
        }
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16
}

/// Linear interpolation: good enough for speech between common rates.
fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 {
        return input.to_vec();
    }
    let ratio = from as f64 / to as f64;
    let n = (input.len() as f64 / ratio) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * ratio;
            let j = x as usize;
            let f = (x - j as f64) as f32;
            let a = input[j.min(input.len() - 1)];
            let b = input[(j + 1).min(input.len() - 1)];
            a + (b - a) * f
        })
        .collect()
}

/// A bounded queue of 48 kHz mono samples between a device's callback
/// thread and the engine. When it is full the oldest samples go: for a
/// call, late audio is worse than lost audio.
#[derive(Clone)]
struct Ring {
    inner: Arc<Mutex<VecDeque<i16>>>,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring { inner: Arc::new(Mutex::new(VecDeque::with_capacity(cap))), cap }
    }

    fn push(&self, samples: impl IntoIterator<Item = i16>) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for s in samples {
            if q.len() == self.cap {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    fn pop_into(&self, out: &mut [i16]) -> usize {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(out.len());
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        n
    }
}

/// The ring of an incoming call, played to an output until dropped: two
/// 400 ms bursts of 400 + 450 Hz, 200 ms apart, every 3 s (the British
/// double ring, recognisable and easy to tell apart from speech). The
/// caller hears the same cadence, quieter, as ringback.
pub struct Ringtone {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The ring's sample `i` (48 kHz) at half scale.
pub fn ring_sample(i: usize) -> i16 {
    let t = i as f64 / SAMPLE_RATE as f64;
    let in_cycle = t % 3.0;
    let on = in_cycle < 0.4 || (0.6..1.0).contains(&in_cycle);
    if !on {
        return 0;
    }
    let tau = std::f64::consts::TAU;
    (((tau * 400.0 * t).sin() + (tau * 450.0 * t).sin()) * 0.25 * i16::MAX as f64) as i16
}

/// Which ring: the callee's ringtone or the caller's ringback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Ring,
    /// At a fifth of the level: it plays in the caller's ear.
    Ringback,
}

impl Ringtone {
    pub fn start(output: &AudioOutput, tone: Tone) -> Result<Ringtone> {
        let divisor = if tone == Tone::Ringback { 5 } else { 1 };
        let mut sink = open_sink(output)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("confab-ringtone".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let mut frame = [0i16; FRAME];
                let mut n = 0usize;
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    for (k, s) in frame.iter_mut().enumerate() {
                        *s = ring_sample(n * FRAME + k) / divisor;
                    }
                    if sink.write(&frame).is_err() {
                        break;
                    }
                    n += 1;
                    // Real time: the device's queue is short.
                    let due = started + std::time::Duration::from_millis(20 * n as u64);
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                }
                let _ = sink.finish();
            })
            .map_err(|e| Error::Invalid(format!("cannot start the ringtone: {e}")))?;
        Ok(Ringtone { stop, thread: Some(thread) })
    }
}

impl Drop for Ringtone {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Real devices through cpal. A cpal stream is not `Send` everywhere, so
/// each lives on its own thread, fed through a [`Ring`].
mod device {
    use super::*;
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    use std::sync::mpsc as std_mpsc;

    fn names(devices: impl Iterator<Item = cpal::Device>) -> Vec<(String, cpal::Device)> {
        devices.filter_map(|d| Some((d.description().ok()?.name().to_owned(), d))).collect()
    }

    fn all(host: &cpal::Host, input: bool) -> Result<Vec<(String, cpal::Device)>> {
        let devices = if input { host.input_devices() } else { host.output_devices() }
            .map_err(|e| Error::Invalid(format!("cannot list audio devices: {e}")))?;
        Ok(names(devices))
    }

    pub(super) fn list() -> Result<AudioDevices> {
        let host = cpal::default_host();
        let unique = |v: Vec<(String, cpal::Device)>| {
            let mut seen = std::collections::HashSet::new();
            v.into_iter().map(|(n, _)| n).filter(|n| seen.insert(n.clone())).collect()
        };
        Ok(AudioDevices { microphones: unique(all(&host, true)?), speakers: unique(all(&host, false)?) })
    }

    fn pick(input: bool, name: Option<&str>) -> Result<cpal::Device> {
        let host = cpal::default_host();
        let what = if input { "microphone" } else { "speaker" };
        let device = match name {
            None if input => host.default_input_device(),
            None => host.default_output_device(),
            Some(name) => {
                // The exact name first: "default" is inside "sysdefault:…".
                let devices = all(&host, input)?;
                let exact = devices.iter().position(|(n, _)| n == name);
                let index = exact.or_else(|| devices.iter().position(|(n, _)| n.contains(name)));
                index.map(|i| devices.into_iter().nth(i).expect("index in range").1)
            }
        };
        device.ok_or_else(|| match name {
            Some(name) => Error::Invalid(format!("no {what} named {name:?}")),
            None => Error::Invalid(format!("no {what} found")),
        })
    }

    /// Runs `build` on a thread that keeps the stream it returns alive
    /// until `stop` is dropped; reports whether it could start.
    fn spawn_stream(build: impl FnOnce() -> Result<cpal::Stream> + Send + 'static) -> Result<std_mpsc::Sender<()>> {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("confab-audio".into())
            .spawn(move || {
                let stream = match build().and_then(|s| {
                    s.play().map_err(|e| Error::Invalid(format!("cannot start audio: {e}")))?;
                    Ok(s)
                }) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Until the engine drops its end.
                let _ = stop_rx.recv();
                drop(stream);
            })
            .map_err(|e| Error::Invalid(format!("cannot start an audio thread: {e}")))?;
        ready_rx.recv().map_err(|_| Error::Invalid("the audio thread died".into()))??;
        Ok(stop_tx)
    }

    /// The device's default format with a 20 ms period. The host's default
    /// buffer can be seconds long (ALSA's pulse plugin): latency a call
    /// cannot afford, and the reason a call's first words went missing.
    fn low_latency(supported: &cpal::SupportedStreamConfig) -> cpal::StreamConfig {
        let mut config = supported.config();
        if let cpal::SupportedBufferSize::Range { min, max } = *supported.buffer_size() {
            let period = (config.sample_rate / 50).clamp(min.min(max), max);
            config.buffer_size = cpal::BufferSize::Fixed(period);
        }
        config
    }

    fn stream_error(e: cpal::Error) {
        tracing::warn!(%e, "audio device error");
    }

    pub struct Capture {
        ring: Ring,
        _stop: std_mpsc::Sender<()>,
    }

    impl Capture {
        pub fn open(name: Option<&str>) -> Result<Capture> {
            let device = pick(true, name)?;
            let supported = device.default_input_config().map_err(|e| Error::Invalid(format!("microphone: {e}")))?;
            let config = low_latency(&supported);
            let (rate, channels) = (config.sample_rate, usize::from(config.channels.max(1)));
            // Half a second at most: more is latency, not audio.
            let ring = Ring::new(SAMPLE_RATE as usize / 2);
            let feed = ring.clone();
            let format = supported.sample_format();
            let stop = spawn_stream(move || {
                let push = move |mono: Vec<f32>| feed.push(resample(&mono, rate, SAMPLE_RATE).into_iter().map(to_i16));
                let downmix =
                    move |data: &[f32]| data.chunks(channels).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
                let built = match format {
                    cpal::SampleFormat::F32 => {
                        device.build_input_stream::<f32, _, _>(config, move |d, _| push(downmix(d)), stream_error, None)
                    }
                    cpal::SampleFormat::I16 => device.build_input_stream::<i16, _, _>(
                        config,
                        move |d, _| {
                            let f: Vec<f32> = d.iter().map(|s| *s as f32 / i16::MAX as f32).collect();
                            push(downmix(&f))
                        },
                        stream_error,
                        None,
                    ),
                    other => return Err(Error::Invalid(format!("microphone sample format {other} is not supported"))),
                };
                built.map_err(|e| Error::Invalid(format!("cannot open the microphone: {e}")))
            })?;
            Ok(Capture { ring, _stop: stop })
        }
    }

    impl AudioSource for Capture {
        fn read(&mut self, frame: &mut [i16; FRAME]) {
            self.ring.pop_into(frame);
        }
    }

    pub struct Playback {
        ring: Ring,
        _stop: std_mpsc::Sender<()>,
    }

    impl Playback {
        pub fn open(name: Option<&str>) -> Result<Playback> {
            let device = pick(false, name)?;
            let supported = device.default_output_config().map_err(|e| Error::Invalid(format!("speaker: {e}")))?;
            let config = low_latency(&supported);
            let (rate, channels) = (config.sample_rate, usize::from(config.channels.max(1)));
            // 200 ms at most queued for the speaker.
            let ring = Ring::new(SAMPLE_RATE as usize / 5);
            let drain = ring.clone();
            let format = supported.sample_format();
            let stop = spawn_stream(move || {
                // Pulls enough 48 kHz samples for `frames` device frames.
                let pull = move |frames: usize| -> Vec<f32> {
                    let want = (frames as u64 * SAMPLE_RATE as u64 / rate.max(1) as u64) as usize + 1;
                    let mut buf = vec![0i16; want];
                    drain.pop_into(&mut buf);
                    let f: Vec<f32> = buf.iter().map(|s| *s as f32 / i16::MAX as f32).collect();
                    let mut out = resample(&f, SAMPLE_RATE, rate);
                    out.resize(frames, 0.0);
                    out
                };
                let built = match format {
                    cpal::SampleFormat::F32 => device.build_output_stream::<f32, _, _>(
                        config,
                        move |d, _| {
                            let mono = pull(d.len() / channels);
                            for (frame, s) in d.chunks_mut(channels).zip(mono) {
                                frame.fill(s);
                            }
                        },
                        stream_error,
                        None,
                    ),
                    cpal::SampleFormat::I16 => device.build_output_stream::<i16, _, _>(
                        config,
                        move |d, _| {
                            let mono = pull(d.len() / channels);
                            for (frame, s) in d.chunks_mut(channels).zip(mono) {
                                frame.fill(to_i16(s));
                            }
                        },
                        stream_error,
                        None,
                    ),
                    other => return Err(Error::Invalid(format!("speaker sample format {other} is not supported"))),
                };
                built.map_err(|e| Error::Invalid(format!("cannot open the speaker: {e}")))
            })?;
            Ok(Playback { ring, _stop: stop })
        }
    }

    impl AudioSink for Playback {
        fn write(&mut self, frame: &[i16]) -> Result<()> {
            self.ring.push(frame.iter().copied());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ringtone_rings_into_a_wav_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.wav");
        let ring = Ringtone::start(&AudioOutput::Wav(path.clone()), Tone::Ring).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(ring);
        let samples: Vec<i16> = hound::WavReader::open(&path).unwrap().into_samples().map(|s| s.unwrap()).collect();
        // About 300 ms of it, loud at the start, and nothing after the drop.
        assert!((12_000..=20_000).contains(&samples.len()), "{}", samples.len());
        assert!(samples.iter().take(4800).any(|s| s.unsigned_abs() > 8000));
        assert_eq!(ring_sample(24_100), 0, "quiet between the bursts");
        assert_eq!(ring_sample(48_000 * 2 + 100), 0, "quiet after the double ring");
        assert_ne!(ring_sample(48_000 * 3 + 100), 0, "and again");
        // Ringback: the same cadence, quieter.
        let path = dir.path().join("ringback.wav");
        let ring = Ringtone::start(&AudioOutput::Wav(path.clone()), Tone::Ringback).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(ring);
        let samples: Vec<i16> = hound::WavReader::open(&path).unwrap().into_samples().map(|s| s.unwrap()).collect();
        let loudest = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!((1000..5000).contains(&loudest), "{loudest}");
    }

    #[test]
    fn a_wav_file_comes_back_as_48k_mono_frames_then_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.wav");
        // 16 kHz stereo, 0.1 s of a constant half-scale level.
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..1600 {
            w.write_sample(i16::MAX / 2).unwrap();
            w.write_sample(i16::MAX / 2).unwrap();
        }
        w.finalize().unwrap();
        let mut src = WavSource::open(&path).unwrap();
        let mut frame = [0i16; FRAME];
        let mut loud = 0;
        for _ in 0..10 {
            src.read(&mut frame);
            loud += frame.iter().filter(|s| (**s - i16::MAX / 2).abs() < 50).count();
        }
        // 0.1 s at 48 kHz, give or take the interpolation's last sample.
        assert!((4790..=4800).contains(&loud), "{loud}");
        src.read(&mut frame);
        assert!(frame.iter().all(|s| *s == 0));
    }

    #[test]
    fn a_wav_sink_writes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let mut sink = WavSink::create(&path).unwrap();
        sink.write(&[1, 2, 3]).unwrap();
        sink.finish().unwrap();
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec().sample_rate, SAMPLE_RATE);
        assert_eq!(r.into_samples::<i16>().map(|s| s.unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_full_ring_drops_the_oldest_samples() {
        let ring = Ring::new(4);
        ring.push([1, 2, 3, 4, 5, 6]);
        let mut out = [0i16; 6];
        assert_eq!(ring.pop_into(&mut out), 4);
        assert_eq!(out, [3, 4, 5, 6, 0, 0]);
    }
}
