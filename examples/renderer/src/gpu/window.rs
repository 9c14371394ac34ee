//! Window mode: a winit window with a glutin context (GLES 3.0, else GL 3.3 core), vsync-paced.
//! Mouse clicks and touches become taps, keys become the protocol's keys (Space or T: talk,
//! Escape or Backspace: back, Q: exit), all through [`Screen`] as in headless mode.

use std::num::NonZeroU32;
use std::time::Instant;

use glutin::config::{ConfigTemplateBuilder, GlConfig};
use glutin::context::{
    ContextApi, ContextAttributesBuilder, GlProfile, NotCurrentGlContext, PossiblyCurrentContext,
    Version,
};
use glutin::display::{Display, DisplayApiPreference, GlDisplay};
use glutin::surface::{GlSurface, Surface, SurfaceAttributesBuilder, SwapInterval, WindowSurface};
use raw_window_handle::{HasDisplayHandle, HasWindowHandle};
use winit::application::ApplicationHandler;
use winit::dpi::{LogicalSize, PhysicalPosition};
use winit::event::{ElementState, MouseButton, TouchPhase, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::window::{Window, WindowId};

use super::{GpuError, Painter};
use crate::app::Screen;
use crate::input::key_by_name;
use crate::ui::BACKGROUND;

struct Gl {
    // Field order is drop order: the painter's objects go while the context is current.
    painter: Painter,
    surface: Surface<WindowSurface>,
    context: PossiblyCurrentContext,
    window: Window,
}

struct App {
    screen: Screen,
    gl: Option<Gl>,
    cursor: PhysicalPosition<f64>,
    start: Instant,
    title: String,
    size: (u32, u32),
    error: Option<GpuError>,
}

impl App {
    fn create(&self, el: &ActiveEventLoop) -> Result<Gl, GpuError> {
        let attrs = Window::default_attributes()
            .with_title(self.title.clone())
            .with_inner_size(LogicalSize::new(self.size.0, self.size.1));
        let window = el
            .create_window(attrs)
            .map_err(|e| GpuError::Window(format!("creating the window: {e}")))?;
        let raw_display = el
            .display_handle()
            .map_err(|e| GpuError::Window(e.to_string()))?
            .as_raw();
        let raw = window
            .window_handle()
            .map_err(|e| GpuError::Window(e.to_string()))?
            .as_raw();
        // SAFETY: `raw_display` is the event loop's live display connection, which outlives
        // everything made from it here (the event loop outlives `App::gl`).
        let display = unsafe { Display::new(raw_display, DisplayApiPreference::Egl) }
            .map_err(|e| GpuError::Window(format!("EGL display: {e}")))?;
        let template = ConfigTemplateBuilder::new()
            .with_alpha_size(8)
            .compatible_with_native_window(raw)
            .build();
        // SAFETY: the template's native window is `window`, alive for this call.
        let config = unsafe { display.find_configs(template) }
            .map_err(|e| GpuError::Window(format!("GL configurations: {e}")))?
            .reduce(|a, b| {
                if b.num_samples() > a.num_samples() {
                    b
                } else {
                    a
                }
            })
            .ok_or_else(|| GpuError::Window("no GL configuration fits the window".into()))?;
        let gles = ContextAttributesBuilder::new()
            .with_context_api(ContextApi::Gles(Some(Version::new(3, 0))))
            .build(Some(raw));
        let core = ContextAttributesBuilder::new()
            .with_context_api(ContextApi::OpenGl(Some(Version::new(3, 3))))
            .with_profile(GlProfile::Core)
            .build(Some(raw));
        // SAFETY: `raw` is the handle of `window`, which outlives the context (both in `Gl`,
        // the context dropped first).
        let (context, is_gles) = match unsafe { display.create_context(&config, &gles) } {
            Ok(c) => (c, true),
            // SAFETY: as above.
            Err(_) => (
                unsafe { display.create_context(&config, &core) }.map_err(|e| {
                    GpuError::Window(format!("no GLES 3.0 nor GL 3.3 context: {e}"))
                })?,
                false,
            ),
        };
        let size = window.inner_size();
        let surface_attrs = SurfaceAttributesBuilder::<WindowSurface>::new().build(
            raw,
            NonZeroU32::new(size.width).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(size.height).unwrap_or(NonZeroU32::MIN),
        );
        // SAFETY: the surface attributes carry `window`'s handle; the window outlives the surface.
        let surface = unsafe { display.create_window_surface(&config, &surface_attrs) }
            .map_err(|e| GpuError::Window(format!("window surface: {e}")))?;
        let context = context
            .make_current(&surface)
            .map_err(|e| GpuError::Window(format!("make current: {e}")))?;
        if let Err(e) = surface.set_swap_interval(&context, SwapInterval::Wait(NonZeroU32::MIN)) {
            tracing::warn!("no vsync: {e}");
        }
        // SAFETY: the context is current on this (the event loop's) thread; the display returns
        // its function pointers for the names glow asks for.
        let gl = unsafe {
            glow::Context::from_loader_function_cstr(|name| display.get_proc_address(name))
        };
        let painter = Painter::new(gl, is_gles)?;
        tracing::info!("window mode: {}", painter.renderer());
        Ok(Gl {
            painter,
            surface,
            context,
            window,
        })
    }

    fn redraw(&mut self) {
        let Some(gl) = self.gl.as_mut() else { return };
        let now = self.start.elapsed().as_secs_f64();
        self.screen.begin(now);
        self.screen.layout(now);
        self.screen.run_script();
        let (w, h) = self.screen.size();
        let vertices = self.screen.frame().vertices.clone();
        gl.painter.paint(
            w,
            h,
            BACKGROUND,
            &vertices,
            self.screen.fonts_mut().atlas_mut(),
        );
        if let Err(e) = gl.surface.swap_buffers(&gl.context) {
            tracing::warn!("swap: {e}");
        }
        gl.window.request_redraw();
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.gl.is_some() {
            return;
        }
        match self.create(el) {
            Ok(gl) => {
                let size = gl.window.inner_size();
                self.screen.resize(size.width, size.height);
                gl.window.request_redraw();
                self.gl = Some(gl);
            }
            Err(e) => {
                self.error = Some(e);
                el.exit();
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => el.exit(),
            WindowEvent::Resized(size) => {
                if let (Some(gl), Some(w), Some(h)) = (
                    &self.gl,
                    NonZeroU32::new(size.width),
                    NonZeroU32::new(size.height),
                ) {
                    gl.surface.resize(&gl.context, w, h);
                    self.screen.resize(w.get(), h.get());
                }
            }
            WindowEvent::CursorMoved { position, .. } => self.cursor = position,
            WindowEvent::MouseInput {
                state: ElementState::Pressed,
                button: MouseButton::Left,
                ..
            } => self.screen.tap(self.cursor.x as f32, self.cursor.y as f32),
            WindowEvent::Touch(t) if t.phase == TouchPhase::Started => {
                self.screen.tap(t.location.x as f32, t.location.y as f32)
            }
            WindowEvent::KeyboardInput { event, .. } if !event.repeat => {
                let name = match event.logical_key.as_ref() {
                    Key::Named(NamedKey::Space) => "talk",
                    Key::Named(NamedKey::Escape | NamedKey::Backspace) => "back",
                    Key::Character("t" | "T") => "talk",
                    Key::Character("q" | "Q") => "exit",
                    _ => return,
                };
                if let Some(key) = key_by_name(name) {
                    self.screen.key(key, event.state == ElementState::Pressed);
                }
            }
            WindowEvent::RedrawRequested => {
                self.redraw();
                if self.screen.quit {
                    el.exit();
                }
            }
            _ => {}
        }
    }
}

/// Opens a `width` x `height` window titled `title` and runs until it is closed.
pub fn run(screen: Screen, title: &str, width: u32, height: u32) -> Result<(), GpuError> {
    let event_loop = EventLoop::new().map_err(|e| GpuError::Window(format!("event loop: {e}")))?;
    let mut app = App {
        screen,
        gl: None,
        cursor: PhysicalPosition::new(0.0, 0.0),
        start: Instant::now(),
        title: title.to_owned(),
        size: (width, height),
        error: None,
    };
    event_loop
        .run_app(&mut app)
        .map_err(|e| GpuError::Window(format!("event loop: {e}")))?;
    app.gl = None;
    app.screen.close();
    app.error.map_or(Ok(()), Err)
}
