//! Text: glyphs rasterised with fontdue from the shipped DejaVu Sans into a one-channel texture
//! atlas (shelf packing), measured, wrapped and emitted as textured quads.
//!
//! The atlas lives on the CPU side here; the painter uploads the rows that changed. Texel
//! (0..2, 0..2) is solid white: untextured shapes sample it, so one shader draws everything.

use std::collections::HashMap;

use crate::ui::{Color, Vertex, push_quad};

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Side of the square atlas texture, in texels.
pub const ATLAS_SIZE: u32 = 1024;
const PAD: u32 = 1;

#[derive(Debug, Clone, Copy)]
struct Glyph {
    uv: [f32; 4],
    w: f32,
    h: f32,
    xmin: f32,
    ymin: f32,
    advance: f32,
}

/// The glyph atlas: pixels, where each glyph is, and which rows changed since the last upload.
#[derive(Debug)]
pub struct Atlas {
    pixels: Vec<u8>,
    glyphs: HashMap<(char, u32), Glyph>,
    x: u32,
    y: u32,
    row_h: u32,
    dirty: Option<(u32, u32)>,
    generation: u64,
}

impl Atlas {
    fn new() -> Self {
        let mut a = Self {
            pixels: vec![0; (ATLAS_SIZE * ATLAS_SIZE) as usize],
            glyphs: HashMap::new(),
            x: 0,
            y: 0,
            row_h: 0,
            dirty: None,
            generation: 0,
        };
        a.reset();
        a
    }

    /// Empties the atlas, keeping the white texel.
    fn reset(&mut self) {
        self.pixels.fill(0);
        for y in 0..2 {
            for x in 0..2 {
                if let Some(p) = self.pixels.get_mut((y * ATLAS_SIZE + x) as usize) {
                    *p = 255;
                }
            }
        }
        self.glyphs.clear();
        (self.x, self.y, self.row_h) = (2 + PAD, 0, 2);
        self.dirty = Some((0, ATLAS_SIZE));
        self.generation += 1;
    }

    /// Finds room for a `w` x `h` bitmap; `None` when the atlas is full.
    fn allocate(&mut self, w: u32, h: u32) -> Option<(u32, u32)> {
        if w + PAD > ATLAS_SIZE || h + PAD > ATLAS_SIZE {
            return None;
        }
        if self.x + w + PAD > ATLAS_SIZE {
            (self.x, self.y, self.row_h) = (0, self.y + self.row_h + PAD, 0);
        }
        if self.y + h + PAD > ATLAS_SIZE {
            return None;
        }
        let at = (self.x, self.y);
        self.x += w + PAD;
        self.row_h = self.row_h.max(h);
        Some(at)
    }

    /// The texels, row by row.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Takes the range of rows changed since the last call (`start..end`).
    pub fn take_dirty(&mut self) -> Option<(u32, u32)> {
        self.dirty.take()
    }

    /// Texture coordinates of the white texel.
    pub fn white_uv() -> [f32; 2] {
        let c = 1.0 / ATLAS_SIZE as f32;
        [c, c]
    }
}

/// Vertical metrics of a font size.
#[derive(Debug, Clone, Copy)]
pub struct LineMetrics {
    /// Above the baseline.
    pub ascent: f32,
    /// Baseline to baseline.
    pub height: f32,
}

/// The font and its atlas.
pub struct Fonts {
    font: fontdue::Font,
    atlas: Atlas,
}

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fonts").field("atlas", &self.atlas).finish()
    }
}

/// The shipped font could not be parsed (a corrupt build).
#[derive(Debug, thiserror::Error)]
#[error("loading the font: {0}")]
pub struct FontError(String);

impl Fonts {
    /// Loads the shipped font.
    pub fn new() -> Result<Self, FontError> {
        let font = fontdue::Font::from_bytes(FONT_BYTES, fontdue::FontSettings::default())
            .map_err(|e| FontError(e.to_string()))?;
        Ok(Self {
            font,
            atlas: Atlas::new(),
        })
    }

    /// The atlas, for the painter.
    pub fn atlas_mut(&mut self) -> &mut Atlas {
        &mut self.atlas
    }

    /// Counts atlas resets: a frame built across a reset must be built again.
    pub fn generation(&self) -> u64 {
        self.atlas.generation
    }

    /// Ascent and line height at `px`.
    pub fn line_metrics(&self, px: f32) -> LineMetrics {
        match self.font.horizontal_line_metrics(px) {
            Some(m) => LineMetrics {
                ascent: m.ascent.round(),
                height: m.new_line_size.round(),
            },
            None => LineMetrics {
                ascent: (px * 0.8).round(),
                height: (px * 1.2).round(),
            },
        }
    }

    fn glyph(&mut self, c: char, px: f32) -> Glyph {
        let key = (c, px.to_bits());
        if let Some(g) = self.atlas.glyphs.get(&key) {
            return *g;
        }
        let (m, bitmap) = self.font.rasterize(c, px);
        let (w, h) = (m.width as u32, m.height as u32);
        let at = match self.atlas.allocate(w, h) {
            Some(at) => Some(at),
            None => {
                tracing::debug!("glyph atlas full: starting over");
                self.atlas.reset();
                self.atlas.allocate(w, h)
            }
        };
        let mut g = Glyph {
            uv: [0.0; 4],
            w: w as f32,
            h: h as f32,
            xmin: m.xmin as f32,
            ymin: m.ymin as f32,
            advance: m.advance_width,
        };
        let Some((x0, y0)) = at else {
            // Larger than the whole atlas: advance without drawing.
            g.w = 0.0;
            return g;
        };
        for row in 0..h {
            let src = bitmap.get((row * w) as usize..((row + 1) * w) as usize);
            let start = ((y0 + row) * ATLAS_SIZE + x0) as usize;
            if let (Some(src), Some(dst)) =
                (src, self.atlas.pixels.get_mut(start..start + w as usize))
            {
                dst.copy_from_slice(src);
            }
        }
        let s = ATLAS_SIZE as f32;
        g.uv = [
            x0 as f32 / s,
            y0 as f32 / s,
            (x0 + w) as f32 / s,
            (y0 + h) as f32 / s,
        ];
        self.atlas.dirty = Some(match self.atlas.dirty {
            Some((a, b)) => (a.min(y0), b.max(y0 + h)),
            None => (y0, y0 + h),
        });
        self.atlas.glyphs.insert(key, g);
        g
    }

    /// Width of `text` at `px`.
    pub fn measure(&mut self, text: &str, px: f32) -> f32 {
        let mut w = 0.0;
        let mut prev = None;
        for c in text.chars() {
            if let Some(p) = prev {
                w += self.font.horizontal_kern(p, c, px).unwrap_or(0.0);
            }
            w += self.glyph(c, px).advance;
            prev = Some(c);
        }
        w
    }

    /// Draws one line of `text` with its baseline at `y`, starting at `x`.
    pub fn draw(
        &mut self,
        out: &mut Vec<Vertex>,
        text: &str,
        px: f32,
        x: f32,
        y: f32,
        color: Color,
    ) {
        let mut pen = x.round();
        let base = y.round();
        let mut prev = None;
        for c in text.chars() {
            if let Some(p) = prev {
                pen += self.font.horizontal_kern(p, c, px).unwrap_or(0.0);
            }
            let g = self.glyph(c, px);
            if g.w > 0.0 && g.h > 0.0 {
                let x0 = (pen + g.xmin).round();
                let y0 = base - g.ymin - g.h;
                push_quad(out, [x0, y0, x0 + g.w, y0 + g.h], g.uv, color);
            }
            pen += g.advance;
            prev = Some(c);
        }
    }

    /// Breaks `text` into lines no wider than `max_w`, at most `max_lines`; the last line ends
    /// with an ellipsis when text was cut. Words wider than a line are broken.
    pub fn wrap(&mut self, text: &str, px: f32, max_w: f32, max_lines: usize) -> Vec<String> {
        let mut lines: Vec<String> = vec![];
        let mut cut = false;
        'paragraphs: for paragraph in text.split('\n') {
            let mut line = String::new();
            for word in paragraph.split_whitespace() {
                let candidate = if line.is_empty() {
                    word.to_owned()
                } else {
                    format!("{line} {word}")
                };
                if self.measure(&candidate, px) <= max_w {
                    line = candidate;
                    continue;
                }
                if !line.is_empty() {
                    if lines.len() + 1 >= max_lines {
                        lines.push(line);
                        cut = true;
                        break 'paragraphs;
                    }
                    lines.push(std::mem::take(&mut line));
                }
                // The word alone: break it if it is wider than a line.
                for c in word.chars() {
                    let mut next = line.clone();
                    next.push(c);
                    if !line.is_empty() && self.measure(&next, px) > max_w {
                        if lines.len() + 1 >= max_lines {
                            lines.push(line);
                            cut = true;
                            break 'paragraphs;
                        }
                        lines.push(std::mem::take(&mut line));
                        next = c.to_string();
                    }
                    line = next;
                }
            }
            if lines.len() >= max_lines {
                cut = true;
                break;
            }
            lines.push(line);
        }
        if cut {
            if let Some(last) = lines.last_mut() {
                while !last.is_empty() && self.measure(&format!("{last}…"), px) > max_w {
                    last.pop();
                }
                last.push('…');
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wrapping_respects_width_and_line_count() {
        let mut f = Fonts::new().unwrap();
        let text = "the quick brown fox jumps over the lazy dog ".repeat(10);
        let lines = f.wrap(&text, 20.0, 200.0, 3);
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert!(f.measure(l, 20.0) <= 200.0, "{l:?}");
        }
        assert!(lines[2].ends_with('…'));
        let one = f.wrap("short", 20.0, 200.0, 3);
        assert_eq!(one, vec!["short".to_owned()]);
        let long_word = f.wrap(&"W".repeat(100), 20.0, 100.0, 2);
        assert_eq!(long_word.len(), 2);
        assert!(long_word[1].ends_with('…'));
    }

    #[test]
    fn glyphs_are_cached_and_the_atlas_refills_when_full() {
        let mut f = Fonts::new().unwrap();
        f.atlas_mut().take_dirty();
        let mut out = vec![];
        f.draw(&mut out, "Ag", 32.0, 0.0, 40.0, [1.0; 4]);
        assert_eq!(out.len(), 12);
        assert!(f.atlas_mut().take_dirty().is_some());
        f.draw(&mut out, "gA", 32.0, 0.0, 40.0, [1.0; 4]);
        assert!(
            f.atlas_mut().take_dirty().is_none(),
            "cached glyphs re-rasterised"
        );
        let g0 = f.generation();
        for px in 40..200 {
            f.measure("ABCDEFGHIJKLMNOPQRSTUVWXYZ", px as f32);
        }
        assert!(f.generation() > g0);
    }
}
