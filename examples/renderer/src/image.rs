//! PNG frames: writing what the renderer drew, reading reference images back, and comparing two
//! images within a tolerance (llvmpipe is deterministic on one machine, but another Mesa or CPU
//! may round an edge differently).

use std::path::Path;

use anyhow::{Context, bail};

/// An RGBA8 image, top row first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgba {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// `width * height * 4` bytes.
    pub data: Vec<u8>,
}

/// Writes `image` as an RGBA PNG.
pub fn write_png(path: &Path, image: &Rgba) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), image.width, image.height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header()?;
    w.write_image_data(&image.data)?;
    w.finish()?;
    Ok(())
}

/// Reads an 8-bit RGBA PNG.
pub fn read_png(path: &Path) -> anyhow::Result<Rgba> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info()?;
    let mut data = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut data)?;
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        bail!("{}: not an 8-bit RGBA PNG", path.display());
    }
    data.truncate(info.buffer_size());
    Ok(Rgba {
        width: info.width,
        height: info.height,
        data,
    })
}

/// How far apart two images are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Pixels with some channel differing by more than the threshold.
    pub differing: usize,
    /// All pixels.
    pub total: usize,
    /// The largest channel difference seen.
    pub max_channel: u8,
}

impl Difference {
    /// `differing / total`.
    pub fn fraction(&self) -> f64 {
        self.differing as f64 / self.total.max(1) as f64
    }
}

/// Compares per channel: a pixel differs when any channel is more than `threshold` apart.
/// Images of different sizes are an error.
pub fn compare(a: &Rgba, b: &Rgba, threshold: u8) -> anyhow::Result<Difference> {
    if (a.width, a.height) != (b.width, b.height) || a.data.len() != b.data.len() {
        bail!(
            "sizes differ: {}x{} and {}x{}",
            a.width,
            a.height,
            b.width,
            b.height
        );
    }
    let mut d = Difference {
        differing: 0,
        total: a.data.len() / 4,
        max_channel: 0,
    };
    for (pa, pb) in a.data.chunks_exact(4).zip(b.data.chunks_exact(4)) {
        let worst = pa
            .iter()
            .zip(pb)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0);
        d.max_channel = d.max_channel.max(worst);
        if worst > threshold {
            d.differing += 1;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn png_round_trip_and_compare() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = Rgba {
            width: 3,
            height: 2,
            data: (0..24).map(|i| i as u8 * 10).collect(),
        };
        let p = dir.path().join("a.png");
        write_png(&p, &img).unwrap();
        let back = read_png(&p).unwrap();
        assert_eq!(back, img);
        img.data[0] += 5;
        img.data[4] += 50;
        let d = compare(&back, &img, 8).unwrap();
        assert_eq!((d.differing, d.total, d.max_channel), (1, 6, 50));
        assert!(
            compare(
                &back,
                &Rgba {
                    width: 2,
                    height: 3,
                    data: back.data.clone()
                },
                8
            )
            .is_err()
        );
    }
}
