//! # peerwire-renderer: the OpenGL display client
//!
//! A smart screen's renderer for the example display protocol (`proto/display/v1`), linking
//! peerwire-client. It draws the assistant's attention state as an animated bar, the templates
//! (title, body, list), the sign-in code and a "reconnecting" overlay, with text rasterised
//! from DejaVu Sans into a glyph atlas; taps and keys go back as the protocol's touch and key
//! notifications.
//!
//! Threads: the client runs on its own tokio threads ([`ipc`]); the render thread owns the GL
//! context and never waits on IPC (bounded channels, drained each frame). Modes:
//! - **window** (feature `window`, on by default): winit + glutin, GLES 3.0 or GL 3.3 core;
//! - **headless**: EGL's surfaceless platform (Mesa llvmpipe in CI), frames written as PNG.
//!
//! Module map: [`scene`] (decode and check pushes; what is shown), [`ui`] (layout to
//! triangles and touch targets), [`text`] (font, atlas, wrapping), [`gpu`] (the only module
//! with GL/EGL calls, hence `unsafe`), [`app`] (the frame loop), [`input`] (scripted input),
//! [`ipc`] (the client), [`harness`] (a scriptable display server), [`image`] (PNG, compare),
//! [`bench`](mod@bench) (event-to-pixel latency).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod bench;
pub mod gpu;
pub mod harness;
pub mod image;
pub mod input;
pub mod ipc;
pub mod scene;
pub mod text;
pub mod ui;
