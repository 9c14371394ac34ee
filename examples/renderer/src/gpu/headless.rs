//! Headless rendering: an OpenGL ES 3.0 context on EGL's surfaceless platform
//! (`EGL_MESA_platform_surfaceless`; Mesa's llvmpipe on a machine without a GPU), no window and
//! no surface, drawing into a framebuffer object that is read back as RGBA.
//!
//! libEGL is loaded at run time (`khronos-egl`'s dynamic loading), so the binary links no GL
//! library and window mode works on machines where EGL lives elsewhere.

use glow::HasContext;
use khronos_egl as egl;

use super::{GpuError, Painter};

/// `EGL_PLATFORM_SURFACELESS_MESA`.
const PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;

type Egl = egl::DynamicInstance<egl::EGL1_5>;

fn egl_err(what: &str) -> impl Fn(egl::Error) -> GpuError + '_ {
    move |e| GpuError::Egl(format!("{what}: {e}"))
}

/// A current EGL context with an offscreen framebuffer of a fixed size, and its painter.
pub struct Headless {
    painter: Option<Painter>,
    fbo: glow::Framebuffer,
    rbo: glow::Renderbuffer,
    egl: Egl,
    display: egl::Display,
    context: egl::Context,
    width: u32,
    height: u32,
}

impl std::fmt::Debug for Headless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Headless")
            .field("painter", &self.painter)
            .field("size", &(self.width, self.height))
            .finish()
    }
}

impl Headless {
    /// Creates the context and a `width` x `height` RGBA8 framebuffer, current on this thread.
    pub fn new(width: u32, height: u32) -> Result<Self, GpuError> {
        // SAFETY: loads the system's libEGL.so.1; its symbols are checked against the EGL 1.5
        // API by the loader, and nothing else in the process unloads it.
        let egl = unsafe { Egl::load_required() }
            .map_err(|e| GpuError::Egl(format!("loading libEGL.so.1: {e}")))?;
        // SAFETY: the surfaceless platform takes no native display (EGL_DEFAULT_DISPLAY), and
        // the attribute list is terminated.
        let display = unsafe {
            egl.get_platform_display(
                PLATFORM_SURFACELESS_MESA,
                egl::DEFAULT_DISPLAY,
                &[egl::ATTRIB_NONE],
            )
        }
        .map_err(egl_err(
            "surfaceless display (EGL_MESA_platform_surfaceless)",
        ))?;
        egl.initialize(display).map_err(egl_err("initialize"))?;
        egl.bind_api(egl::OPENGL_ES_API)
            .map_err(egl_err("bind GLES"))?;
        let config = egl
            .choose_first_config(
                display,
                &[
                    egl::RENDERABLE_TYPE,
                    egl::OPENGL_ES3_BIT,
                    // The default is EGL_WINDOW_BIT, which no surfaceless configuration has.
                    egl::SURFACE_TYPE,
                    egl::PBUFFER_BIT,
                    egl::RED_SIZE,
                    8,
                    egl::GREEN_SIZE,
                    8,
                    egl::BLUE_SIZE,
                    8,
                    egl::ALPHA_SIZE,
                    8,
                    egl::NONE,
                ],
            )
            .map_err(egl_err("choose config"))?
            .ok_or_else(|| GpuError::Egl("no GLES 3 configuration".into()))?;
        let context = egl
            .create_context(
                display,
                config,
                None,
                &[
                    egl::CONTEXT_MAJOR_VERSION,
                    3,
                    egl::CONTEXT_MINOR_VERSION,
                    0,
                    egl::NONE,
                ],
            )
            .map_err(egl_err("create GLES 3.0 context"))?;
        // No surface: EGL_KHR_surfaceless_context; we draw into our own framebuffer.
        egl.make_current(display, None, None, Some(context))
            .map_err(egl_err("make current (surfaceless)"))?;
        // SAFETY: the context is current on this thread; the loader returns EGL's function
        // pointers for the GLES entry points glow asks for (null when absent, which glow handles).
        let gl = unsafe {
            glow::Context::from_loader_function(|name| {
                egl.get_proc_address(name)
                    .map_or(std::ptr::null(), |f| f as *const std::ffi::c_void)
            })
        };
        // SAFETY: the context is current; the renderbuffer and framebuffer are created, sized
        // and attached by it, and deleted in `Drop` while it is still current.
        let (fbo, rbo) = unsafe {
            let rbo = gl.create_renderbuffer().map_err(GpuError::Gl)?;
            gl.bind_renderbuffer(glow::RENDERBUFFER, Some(rbo));
            gl.renderbuffer_storage(glow::RENDERBUFFER, glow::RGBA8, width as i32, height as i32);
            let fbo = gl.create_framebuffer().map_err(GpuError::Gl)?;
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(fbo));
            gl.framebuffer_renderbuffer(
                glow::FRAMEBUFFER,
                glow::COLOR_ATTACHMENT0,
                glow::RENDERBUFFER,
                Some(rbo),
            );
            let status = gl.check_framebuffer_status(glow::FRAMEBUFFER);
            if status != glow::FRAMEBUFFER_COMPLETE {
                return Err(GpuError::Gl(format!(
                    "framebuffer incomplete: 0x{status:x}"
                )));
            }
            (fbo, rbo)
        };
        let painter = Painter::new(gl, true)?;
        Ok(Self {
            painter: Some(painter),
            fbo,
            rbo,
            egl,
            display,
            context,
            width,
            height,
        })
    }

    /// The painter (drawing into the framebuffer).
    pub fn painter(&mut self) -> Option<&mut Painter> {
        self.painter.as_mut()
    }

    /// Framebuffer size.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl Drop for Headless {
    fn drop(&mut self) {
        if let Some(painter) = self.painter.take() {
            // SAFETY: the context is still current on this thread and created both objects.
            unsafe {
                painter.gl().delete_framebuffer(self.fbo);
                painter.gl().delete_renderbuffer(self.rbo);
            }
            drop(painter);
        }
        let _ = self.egl.make_current(self.display, None, None, None);
        let _ = self.egl.destroy_context(self.display, self.context);
        let _ = self.egl.terminate(self.display);
    }
}
