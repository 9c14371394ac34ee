//! Layout: a [`Scene`] at a window size and an animation time becomes a list of triangles
//! (coloured, or textured from the glyph atlas) and the touch targets. Pure CPU work, no GL.
//!
//! Sizes derive from one unit, a hundredth of the shorter window side, so the layout adapts
//! to any size and to portrait or landscape; text wraps to the width it gets.

use crate::scene::{Attention, Content, Link, Scene, Template};
use crate::text::{Atlas, Fonts};

/// Straight RGBA, 0..1.
pub type Color = [f32; 4];

/// One vertex: position (pixels, y down), atlas texture coordinates, colour.
pub type Vertex = [f32; 8];

/// The background.
pub const BACKGROUND: Color = [0.055, 0.065, 0.095, 1.0];
const TEXT: Color = [0.93, 0.94, 0.96, 1.0];
const MUTED: Color = [0.62, 0.66, 0.74, 1.0];
const CARD: Color = [0.11, 0.13, 0.18, 1.0];
const CARD_ALT: Color = [0.14, 0.16, 0.22, 1.0];
const WARN: Color = [0.98, 0.66, 0.16, 1.0];

/// A touch target: what a tap inside `rect` (`[x0, y0, x1, y1]`) is reported as.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Pixel rectangle.
    pub rect: [f32; 4],
    /// The element name sent in `TouchEvent.element`.
    pub element: String,
}

/// One laid-out frame.
#[derive(Debug, Default)]
pub struct Frame {
    /// Triangles, three vertices each.
    pub vertices: Vec<Vertex>,
    /// Touch targets, topmost last.
    pub hits: Vec<Hit>,
}

impl Frame {
    /// The element at `(x, y)`, or `""` when the tap hits no target.
    pub fn hit_test(&self, x: f32, y: f32) -> &str {
        self.hits
            .iter()
            .rev()
            .find(|h| x >= h.rect[0] && x < h.rect[2] && y >= h.rect[1] && y < h.rect[3])
            .map_or("", |h| h.element.as_str())
    }
}

/// Appends a textured quad (two triangles).
pub fn push_quad(out: &mut Vec<Vertex>, r: [f32; 4], uv: [f32; 4], c: Color) {
    let [x0, y0, x1, y1] = r;
    let [u0, v0, u1, v1] = uv;
    let v = |x: f32, y: f32, u: f32, w: f32| [x, y, u, w, c[0], c[1], c[2], c[3]];
    out.extend_from_slice(&[
        v(x0, y0, u0, v0),
        v(x1, y0, u1, v0),
        v(x1, y1, u1, v1),
        v(x0, y0, u0, v0),
        v(x1, y1, u1, v1),
        v(x0, y1, u0, v1),
    ]);
}

fn rect(out: &mut Vec<Vertex>, r: [f32; 4], c: Color) {
    let [u, v] = Atlas::white_uv();
    push_quad(out, r.map(f32::round), [u, v, u, v], c);
}

fn circle(out: &mut Vec<Vertex>, cx: f32, cy: f32, radius: f32, c: Color) {
    const SEGMENTS: usize = 40;
    let [u, v] = Atlas::white_uv();
    let point = |i: usize| {
        let a = i as f32 / SEGMENTS as f32 * std::f32::consts::TAU;
        (cx + radius * a.cos(), cy + radius * a.sin())
    };
    for i in 0..SEGMENTS {
        let (ax, ay) = point(i);
        let (bx, by) = point(i + 1);
        for (x, y) in [(cx, cy), (ax, ay), (bx, by)] {
            out.push([x, y, u, v, c[0], c[1], c[2], c[3]]);
        }
    }
}

fn with_alpha(c: Color, a: f32) -> Color {
    [c[0], c[1], c[2], c[3] * a.clamp(0.0, 1.0)]
}

fn mix(a: Color, b: Color, t: f32) -> Color {
    let t = t.clamp(0.0, 1.0);
    let mut out = a;
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b.iter())) {
        *o = x + (y - x) * t;
    }
    out
}

/// The indicator colour of a state.
pub fn attention_color(a: Option<Attention>) -> Color {
    match a {
        None | Some(Attention::Idle) => [0.30, 0.42, 0.62, 1.0],
        Some(Attention::Listening) => [0.16, 0.78, 0.96, 1.0],
        Some(Attention::Thinking) => [0.36, 0.50, 1.00, 1.0],
        Some(Attention::Speaking) => [0.20, 0.90, 0.72, 1.0],
        Some(Attention::Error(_)) => [0.95, 0.25, 0.25, 1.0],
    }
}

struct Ctx<'a> {
    fonts: &'a mut Fonts,
    out: Frame,
    w: f32,
    h: f32,
    u: f32,
}

impl Ctx<'_> {
    fn px(&self, units: f32) -> f32 {
        (self.u * units).round().max(8.0)
    }

    fn text(&mut self, s: &str, px: f32, x: f32, baseline: f32, c: Color) {
        self.fonts
            .draw(&mut self.out.vertices, s, px, x, baseline, c);
    }

    fn centered(&mut self, s: &str, px: f32, baseline: f32, c: Color) {
        let w = self.fonts.measure(s, px);
        self.text(s, px, ((self.w - w) / 2.0).round(), baseline, c);
    }

    /// Wrapped paragraph in `area` (`[x0, top, x1, bottom]`); returns where it ended.
    fn paragraph(&mut self, s: &str, px: f32, area: [f32; 4], c: Color) -> f32 {
        let [x0, top, x1, bottom] = area;
        let m = self.fonts.line_metrics(px);
        let fit = ((bottom - top) / m.height).floor().max(1.0) as usize;
        let lines = self.fonts.wrap(s, px, x1 - x0, fit);
        let mut y = top;
        for line in lines {
            self.text(&line, px, x0, y + m.ascent, c);
            y += m.height;
        }
        y
    }
}

/// Lays out `scene` for a `width` x `height` window at render-clock time `now` (seconds).
pub fn build(scene: &Scene, fonts: &mut Fonts, width: u32, height: u32, now: f64) -> Frame {
    // A frame built across an atlas reset has stale texture coordinates: build it again.
    for _ in 0..2 {
        let generation = fonts.generation();
        let frame = build_once(scene, fonts, width, height, now);
        if fonts.generation() == generation {
            return frame;
        }
    }
    build_once(scene, fonts, width, height, now)
}

fn build_once(scene: &Scene, fonts: &mut Fonts, width: u32, height: u32, now: f64) -> Frame {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    let mut cx = Ctx {
        fonts,
        out: Frame::default(),
        w,
        h,
        u: w.min(h) / 100.0,
    };
    let t = (now - scene.changed_at).max(0.0) as f32;
    let bar_h = cx.px(2.0);
    let margin = cx.px(6.0);

    // Header: assistant and state.
    let header_px = cx.px(4.0);
    let assistant = if scene.assistant.is_empty() {
        "Assistant".to_owned()
    } else {
        scene.assistant.clone()
    };
    let state = match scene.attention {
        None => "waiting".to_owned(),
        Some(Attention::Error(v)) => format!("unknown state {v}"),
        Some(a) => a.name().to_owned(),
    };
    let dot_r = (header_px * 0.3).round();
    let header_base = margin + header_px * 0.8;
    circle(
        &mut cx.out.vertices,
        margin + dot_r,
        header_base - header_px * 0.35,
        dot_r,
        attention_color(scene.attention),
    );
    let label_x = margin + dot_r * 3.0;
    cx.text(
        &format!("{assistant} · {state}"),
        header_px,
        label_x,
        header_base,
        MUTED,
    );

    let top = margin + header_px * 1.8;
    let bottom = h - bar_h - margin;
    let (x0, x1) = (margin, w - margin);
    match &scene.content {
        Content::Home => {
            let px = cx.px(6.0);
            cx.centered("Press Talk to speak", px, (top + bottom) / 2.0, TEXT);
        }
        Content::SignIn { url, code } => sign_in(&mut cx, url, code, top, bottom),
        Content::Template { template, .. } => {
            dismiss_button(&mut cx, header_px, margin);
            match template {
                Template::Title { title, subtitle } => {
                    let (tp, sp) = (cx.px(9.0), cx.px(4.5));
                    let mid = (top + bottom) / 2.0;
                    let lines = cx.fonts.wrap(title, tp, x1 - x0, 2);
                    let lh = cx.fonts.line_metrics(tp).height;
                    let mut y = mid - lh * lines.len() as f32 / 2.0 + tp * 0.6;
                    for line in lines {
                        cx.centered(&line, tp, y, TEXT);
                        y += lh;
                    }
                    if !subtitle.is_empty() {
                        cx.centered(subtitle, sp, y + sp * 0.4, MUTED);
                    }
                }
                Template::Body {
                    title,
                    subtitle,
                    body,
                } => {
                    rect(&mut cx.out.vertices, [x0, top, x1, bottom], CARD);
                    let pad = cx.px(3.0);
                    let (ix0, ix1) = (x0 + pad, x1 - pad);
                    let mut y =
                        cx.paragraph(title, cx.px(7.0), [ix0, top + pad, ix1, bottom - pad], TEXT);
                    if !subtitle.is_empty() {
                        y = cx.paragraph(subtitle, cx.px(4.0), [ix0, y, ix1, bottom - pad], MUTED);
                    }
                    rect(
                        &mut cx.out.vertices,
                        [ix0, y + pad * 0.4, ix1, y + pad * 0.4 + 2.0],
                        CARD_ALT,
                    );
                    cx.paragraph(body, cx.px(4.5), [ix0, y + pad, ix1, bottom - pad], TEXT);
                }
                Template::List { title, items } => {
                    let tp = cx.px(6.5);
                    let y = cx.paragraph(title, tp, [x0, top, x1, bottom], TEXT);
                    let row_h = cx.px(9.0);
                    let gap = cx.px(1.2);
                    let ip = cx.px(4.0);
                    let mut ry = y + gap;
                    let fit = (((bottom - ry) + gap) / (row_h + gap)).floor().max(0.0) as usize;
                    let shown = if items.len() > fit {
                        fit.saturating_sub(1)
                    } else {
                        items.len()
                    };
                    for (i, item) in items.iter().take(shown).enumerate() {
                        let r = [x0, ry, x1, ry + row_h];
                        rect(
                            &mut cx.out.vertices,
                            r,
                            if i % 2 == 0 { CARD } else { CARD_ALT },
                        );
                        let badge = format!("{}", i + 1);
                        let pad = cx.px(3.0);
                        cx.text(&badge, ip, x0 + pad, ry + row_h / 2.0 + ip * 0.35, MUTED);
                        let tx = x0 + pad * 3.0;
                        let line = cx.fonts.wrap(item, ip, x1 - tx - pad, 1);
                        if let Some(line) = line.first() {
                            cx.text(line, ip, tx, ry + row_h / 2.0 + ip * 0.35, TEXT);
                        }
                        cx.out.hits.push(Hit {
                            rect: r,
                            element: format!("item-{i}"),
                        });
                        ry += row_h + gap;
                    }
                    if shown < items.len() {
                        let more = format!("+{} more", items.len() - shown);
                        cx.text(&more, ip, x0, ry + ip, MUTED);
                    }
                }
            }
        }
        Content::Placeholder { reason } => {
            dismiss_button(&mut cx, header_px, margin);
            let border = cx.px(0.6);
            rect(&mut cx.out.vertices, [x0, top, x1, bottom], WARN);
            rect(
                &mut cx.out.vertices,
                [x0 + border, top + border, x1 - border, bottom - border],
                CARD,
            );
            let pad = cx.px(3.0);
            let ip = cx.px(6.0);
            let r = (ip * 0.6).round();
            let (icx, icy) = (x0 + pad + r, top + pad + r);
            circle(&mut cx.out.vertices, icx, icy, r, WARN);
            let bang = cx.fonts.measure("!", ip);
            cx.text("!", ip, icx - bang / 2.0, icy + ip * 0.36, BACKGROUND);
            cx.text("Cannot show this", ip, icx + r * 2.0, icy + ip * 0.36, WARN);
            let area = [x0 + pad, icy + r + pad, x1 - pad, bottom - pad];
            cx.paragraph(reason, cx.px(4.0), area, TEXT);
        }
    }

    attention_bar(&mut cx, scene.attention, t, bar_h);

    match scene.link {
        Link::Connected { .. } => {}
        Link::Connecting => overlay(&mut cx, "Connecting…", t),
        Link::Reconnecting => overlay(&mut cx, "Reconnecting…", t),
    }
    cx.out
}

fn dismiss_button(cx: &mut Ctx<'_>, header_px: f32, margin: f32) {
    let size = (header_px * 1.6).round();
    let r = [
        cx.w - margin - size,
        margin - size * 0.2,
        cx.w - margin,
        margin + size * 0.8,
    ];
    rect(&mut cx.out.vertices, r, CARD_ALT);
    let xw = cx.fonts.measure("×", header_px);
    cx.text(
        "×",
        header_px,
        r[0] + (size - xw) / 2.0,
        r[1] + size * 0.68,
        TEXT,
    );
    cx.out.hits.push(Hit {
        rect: r,
        element: "dismiss".into(),
    });
}

fn sign_in(cx: &mut Ctx<'_>, url: &str, code: &str, top: f32, bottom: f32) {
    let (tp, sp, cp) = (cx.px(7.0), cx.px(4.0), cx.px(11.0));
    let block = tp * 1.4 + sp * 1.5 * 2.0 + cp * 2.0;
    let mut y = ((top + bottom) / 2.0 - block / 2.0).max(top) + tp;
    cx.centered("Sign in", tp, y, TEXT);
    y += tp * 0.4 + sp * 1.5;
    let x0 = cx.px(6.0);
    let x1 = cx.w - x0;
    let line = cx
        .fonts
        .wrap(&format!("On your phone, go to {url}"), sp, x1 - x0, 1);
    if let Some(line) = line.first() {
        cx.centered(line, sp, y, MUTED);
    }
    y += sp * 1.5;
    cx.centered("and enter this code:", sp, y, MUTED);
    y += cp * 0.5;
    let cw = cx.fonts.measure(code, cp).min(x1 - x0);
    let pad = cx.px(3.0);
    let bx0 = ((cx.w - cw) / 2.0 - pad).max(x0 - pad);
    let r = [bx0, y, bx0 + cw + pad * 2.0, y + cp * 1.5];
    rect(&mut cx.out.vertices, r, CARD_ALT);
    cx.out.hits.push(Hit {
        rect: r,
        element: "sign-in-code".into(),
    });
    cx.centered(code, cp, y + cp * 1.12, TEXT);
}

/// The animated attention indicator along the bottom edge.
fn attention_bar(cx: &mut Ctx<'_>, a: Option<Attention>, t: f32, bar_h: f32) {
    use std::f32::consts::TAU;
    let (w, y0, y1) = (cx.w, cx.h - bar_h, cx.h);
    let color = attention_color(a);
    let base = with_alpha(color, 0.35);
    let v = &mut cx.out.vertices;
    match a {
        None => rect(v, [0.0, y0, w, y1], with_alpha(color, 0.2)),
        Some(Attention::Idle) => {
            // Breathing, every 4 s.
            let k = 0.5 - 0.5 * (t * TAU / 4.0).cos();
            rect(v, [0.0, y0, w, y1], with_alpha(color, 0.45 + 0.35 * k));
        }
        Some(Attention::Listening) => {
            // A bright band growing from the centre and back, every 1.2 s.
            rect(v, [0.0, y0, w, y1], base);
            let k = 0.5 - 0.5 * (t * TAU / 1.2).cos();
            let half = w * (0.15 + 0.35 * k);
            rect(v, [w / 2.0 - half, y0, w / 2.0 + half, y1], color);
        }
        Some(Attention::Thinking) => {
            // A segment sweeping left to right and back, every 1.6 s.
            rect(v, [0.0, y0, w, y1], base);
            let k = 0.5 - 0.5 * (t * TAU / 1.6).cos();
            let seg = w * 0.25;
            let x = (w - seg) * k;
            rect(v, [x, y0, x + seg, y1], mix(color, [1.0; 4], 0.3));
        }
        Some(Attention::Speaking) => {
            // Pulsing brightness, every 0.5 s, and a taller bar.
            let k = 0.5 - 0.5 * (t * TAU / 0.5).cos();
            let grow = bar_h * 0.5 * k;
            rect(v, [0.0, y0 - grow, w, y1], mix(base, color, 0.4 + 0.6 * k));
        }
        Some(Attention::Error(_)) => {
            // Blinking red, once a second.
            let on = (t % 1.0) < 0.6;
            rect(
                v,
                [0.0, y0, w, y1],
                with_alpha(color, if on { 1.0 } else { 0.35 }),
            );
        }
    }
}

/// Dims the screen and shows `message` above a spinner.
fn overlay(cx: &mut Ctx<'_>, message: &str, t: f32) {
    rect(
        &mut cx.out.vertices,
        [0.0, 0.0, cx.w, cx.h],
        [0.0, 0.0, 0.0, 0.72],
    );
    let px = cx.px(6.0);
    let mid = cx.h / 2.0;
    // An opaque panel, so the screen below does not show through the message.
    let half_w = (cx.fonts.measure(message, px) / 2.0 + cx.px(6.0)).min(cx.w / 2.0);
    let panel = [
        cx.w / 2.0 - half_w,
        mid - px * 2.0,
        cx.w / 2.0 + half_w,
        mid + cx.px(18.0),
    ];
    rect(&mut cx.out.vertices, panel, CARD);
    cx.centered(message, px, mid - px * 0.5, TEXT);
    let ring = cx.px(5.0);
    let dot = (cx.u * 1.1).max(3.0);
    let lead = ((t * 8.0) as usize) % 8;
    for i in 0..8 {
        let a = i as f32 / 8.0 * std::f32::consts::TAU;
        let alpha = if i == lead { 1.0 } else { 0.3 };
        circle(
            &mut cx.out.vertices,
            cx.w / 2.0 + ring * a.cos(),
            mid + ring * 1.6 + ring * a.sin(),
            dot,
            with_alpha(TEXT, alpha),
        );
    }
}

/// The centre of touch target `element` when `scene` is laid out at `width` x `height` (for
/// input scripts), or `None` when the layout has no such target.
pub fn element_center(
    scene: &Scene,
    width: u32,
    height: u32,
    element: &str,
) -> Result<Option<(u32, u32)>, crate::text::FontError> {
    let frame = build(scene, &mut Fonts::new()?, width, height, 0.0);
    Ok(frame.hits.iter().find(|h| h.element == element).map(|h| {
        (
            ((h.rect[0] + h.rect[2]) / 2.0) as u32,
            ((h.rect[1] + h.rect[3]) / 2.0) as u32,
        )
    }))
}

/// The centre of a template's dismiss button at `width` x `height`.
pub fn dismiss_center(
    width: u32,
    height: u32,
) -> Result<Option<(u32, u32)>, crate::text::FontError> {
    let mut scene = Scene::default();
    scene.apply(
        crate::scene::Update::Content(Content::Template {
            token: String::new(),
            template: Template::Title {
                title: "x".into(),
                subtitle: String::new(),
            },
        }),
        0.0,
    );
    element_center(&scene, width, height, "dismiss")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scene::Update;

    fn list(n: usize) -> Scene {
        let mut s = Scene::default();
        s.apply(
            Update::Link(Link::Connected {
                assistant: "Alexa".into(),
            }),
            0.0,
        );
        s.apply(
            Update::Content(Content::Template {
                token: "l".into(),
                template: Template::List {
                    title: "Groceries".into(),
                    items: (0..n).map(|i| format!("item {i}")).collect(),
                },
            }),
            0.0,
        );
        s
    }

    #[test]
    fn list_rows_are_touch_targets_at_any_size() {
        let mut fonts = Fonts::new().unwrap();
        for (w, h) in [(640, 400), (400, 640), (1920, 1080), (160, 100)] {
            let f = build(&list(12), &mut fonts, w, h, 0.0);
            assert!(!f.vertices.is_empty());
            assert!(f.hits.iter().any(|h| h.element == "dismiss"), "{w}x{h}");
            for hit in &f.hits {
                assert!(
                    hit.rect[2] <= w as f32 + 0.5 && hit.rect[3] <= h as f32 + 0.5,
                    "{hit:?} at {w}x{h}"
                );
                let (x, y) = (
                    (hit.rect[0] + hit.rect[2]) / 2.0,
                    (hit.rect[1] + hit.rect[3]) / 2.0,
                );
                assert_eq!(f.hit_test(x, y), hit.element);
            }
        }
        let big = build(&list(3), &mut fonts, 1280, 800, 0.0);
        assert_eq!(
            big.hits
                .iter()
                .filter(|h| h.element.starts_with("item-"))
                .count(),
            3
        );
        assert_eq!(big.hit_test(-5.0, -5.0), "");
    }

    #[test]
    fn the_indicator_moves() {
        let mut fonts = Fonts::new().unwrap();
        let mut s = list(1);
        for a in [
            Attention::Idle,
            Attention::Listening,
            Attention::Thinking,
            Attention::Speaking,
            Attention::Error(9),
        ] {
            s.apply(Update::Attention(a), 0.0);
            let f0 = build(&s, &mut fonts, 640, 400, 0.0);
            let f1 = build(&s, &mut fonts, 640, 400, 0.7);
            assert_ne!(f0.vertices, f1.vertices, "{a:?} does not animate");
        }
    }
}
