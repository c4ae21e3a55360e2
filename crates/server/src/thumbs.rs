//! What a blob is (sniffed from its bytes, never from its name) and, for
//! images, a thumbnail made in the background, at most a few at a time, so
//! a burst of photos never slows the chat down.

use crate::error::{ApiError, Result};
use crate::media::{BlobHash, BlobStore};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, Semaphore};

/// Bytes read from the start of a blob to sniff it and to find an image's
/// size (a JPEG's dimensions can follow a long EXIF block).
pub const HEAD_BYTES: usize = 256 * 1024;
/// Largest image a thumbnail is made of, in bytes and pixels: decoding is
/// memory-hungry, and a small file can claim huge dimensions.
pub const MAX_THUMB_SOURCE_BYTES: u64 = 40 * 1024 * 1024;
pub const MAX_THUMB_SOURCE_PIXELS: u64 = 50_000_000;
/// A thumbnail fits in this square.
pub const THUMB_EDGE: u32 = 320;
/// Thumbnails made at once.
const THUMB_WORKERS: usize = 2;

/// The type of a blob from its first bytes.
pub fn sniff(head: &[u8]) -> String {
    match infer::get(head) {
        Some(t) => t.mime_type().to_owned(),
        None if !head.is_empty() && std::str::from_utf8(trim_partial_char(head)).is_ok() => "text/plain".to_owned(),
        None => "application/octet-stream".to_owned(),
    }
}

/// The head without a trailing, cut-off UTF-8 sequence.
fn trim_partial_char(head: &[u8]) -> &[u8] {
    match std::str::from_utf8(head) {
        Ok(_) => head,
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        Err(_) => head,
    }
}

/// The image formats thumbnails are made of.
fn image_format(mime: &str) -> Option<image::ImageFormat> {
    Some(match mime {
        "image/png" => image::ImageFormat::Png,
        "image/jpeg" => image::ImageFormat::Jpeg,
        "image/gif" => image::ImageFormat::Gif,
        "image/webp" => image::ImageFormat::WebP,
        _ => return None,
    })
}

/// An image's width and height, read from its header.
pub fn dimensions(mime: &str, head: &[u8]) -> Option<(u32, u32)> {
    let format = image_format(mime)?;
    let reader = image::ImageReader::with_format(std::io::Cursor::new(head), format);
    reader.into_dimensions().ok().filter(|&(w, h)| w > 0 && h > 0)
}

/// Whether a thumbnail will be made of a blob.
pub fn thumbable(mime: &str, size: u64, dims: Option<(u32, u32)>) -> bool {
    image_format(mime).is_some()
        && size <= MAX_THUMB_SOURCE_BYTES
        && dims.is_some_and(|(w, h)| u64::from(w) * u64::from(h) <= MAX_THUMB_SOURCE_PIXELS)
}

/// A thumbnail of an image: JPEG, or PNG when it has transparency.
pub fn thumbnail(mime: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let format = image_format(mime)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().ok()?;
    // `thumbnail` fits the box both ways; a small image stays as it is.
    let small = if img.width() <= THUMB_EDGE && img.height() <= THUMB_EDGE {
        img
    } else {
        img.thumbnail(THUMB_EDGE, THUMB_EDGE)
    };
    let mut out = std::io::Cursor::new(Vec::new());
    if small.color().has_alpha() {
        small.write_to(&mut out, image::ImageFormat::Png).ok()?;
    } else {
        let rgb = small.to_rgb8();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        rgb.write_with_encoder(encoder).ok()?;
    }
    Some(out.into_inner())
}

type Slot = Arc<OnceCell<Option<String>>>;

/// Makes thumbnails, each once: a request for one being made waits for it.
pub struct Thumbnailer {
    working: Semaphore,
    in_flight: Mutex<HashMap<String, Slot>>,
}

impl Default for Thumbnailer {
    fn default() -> Self {
        Thumbnailer { working: Semaphore::new(THUMB_WORKERS), in_flight: Mutex::default() }
    }
}

impl Thumbnailer {
    /// The thumbnail blob of `hash`, made now if it has not been: `None`
    /// when the blob is not an image one can be made of.
    pub async fn get(&self, store: &Arc<dyn Store>, blobs: &Arc<dyn BlobStore>, hash: &str) -> Result<Option<String>> {
        let Some(info) = store.blob(hash).await? else { return Ok(None) };
        if info.thumbnail.is_some() || !info.thumbable {
            return Ok(info.thumbnail);
        }
        let slot = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hash.to_owned()).or_default().clone()
        };
        let made = slot
            .get_or_try_init(|| async {
                let _worker = self.working.acquire().await.map_err(|e| ApiError::internal("thumbnails", e))?;
                self.make(store, blobs, &info).await
            })
            .await
            .cloned();
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(hash).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            map.remove(hash);
        }
        made
    }

    async fn make(
        &self,
        store: &Arc<dyn Store>,
        blobs: &Arc<dyn BlobStore>,
        info: &crate::store::BlobInfo,
    ) -> Result<Option<String>> {
        let Some(source) = BlobHash::parse(&info.hash) else { return Ok(None) };
        let bytes = blobs.read(source, 0, info.size as usize).await?;
        let mime = info.mime.clone();
        let thumb = tokio::task::spawn_blocking(move || thumbnail(&mime, &bytes))
            .await
            .map_err(|e| ApiError::internal("thumbnail task", e))?;
        let Some(thumb) = thumb else {
            tracing::info!(blob = %info.hash, "no thumbnail: the image does not decode");
            store.no_thumbnail(&info.hash).await?;
            return Ok(None);
        };
        let upload = uuid::Uuid::now_v7();
        blobs.append(upload, 0, thumb).await?;
        let (thumb, _) = blobs.finish(upload, None).await?;
        let thumb = thumb.hex();
        store.set_thumbnail(&info.hash, &thumb).await?;
        Ok(Some(thumb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
        let img: image::DynamicImage = if alpha {
            image::RgbaImage::from_pixel(w, h, image::Rgba([10, 200, 30, 128])).into()
        } else {
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])).into()
        };
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    #[test]
    fn types_come_from_the_bytes() {
        let p = png(4, 3, false);
        assert_eq!(sniff(&p), "image/png");
        assert_eq!(dimensions("image/png", &p), Some((4, 3)));
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff("héllo wörld".as_bytes()), "text/plain");
        // Cut in the middle of a character, still text.
        assert_eq!(sniff(&"é".repeat(10).as_bytes()[..5]), "text/plain");
        assert_eq!(sniff(&[0xff, 0x00, 0x13, 0x37]), "application/octet-stream");
        // A file named .png that is not one is not an image.
        assert_eq!(dimensions("image/png", b"not a png at all"), None);
    }

    #[test]
    fn thumbnails_fit_the_box_and_keep_transparency() {
        let t = thumbnail("image/png", &png(1000, 500, false)).expect("thumbnail");
        assert_eq!(sniff(&t), "image/jpeg");
        assert_eq!(dimensions("image/jpeg", &t), Some((320, 160)));
        let t = thumbnail("image/png", &png(50, 80, true)).expect("thumbnail");
        assert_eq!(sniff(&t), "image/png");
        assert_eq!(dimensions("image/png", &t), Some((50, 80)), "small images are not enlarged");
        assert_eq!(thumbnail("image/png", b"garbage"), None);
        assert!(!thumbable("image/png", 100, Some((100_000, 100_000))));
        assert!(!thumbable("application/pdf", 100, Some((10, 10))));
    }
}
