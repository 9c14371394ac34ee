//! The one place with GL and EGL calls. `glow`'s calls and the EGL/glutin context functions are
//! `unsafe` (raw FFI into the driver), so this module, and only this module, allows unsafe
//! code; every block states why it is sound. The invariant they share: a [`Painter`] is used
//! only on the thread where its context is current, and every GL object it names was created by
//! that context.
//!
//! [`Painter`]: one shader program draws every triangle (colour times the atlas' red channel;
//! shapes sample the atlas' white texel), one streaming vertex buffer, one atlas texture.
//! GLES 3.0 or GL 3.3 core.
#![allow(unsafe_code)]

pub mod headless;
#[cfg(feature = "window")]
pub mod window;

use glow::HasContext;

use crate::text::{ATLAS_SIZE, Atlas};
use crate::ui::{Color, Vertex};

/// A GL failure: the driver refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// EGL could not be loaded or refused a step.
    #[error("EGL: {0}")]
    Egl(String),
    /// A shader or GL object could not be made.
    #[error("GL: {0}")]
    Gl(String),
    /// The window system refused (window mode).
    #[error("window: {0}")]
    Window(String),
}

const VERTEX_SHADER: &str = r#"
layout(location = 0) in vec2 a_pos;
layout(location = 1) in vec2 a_uv;
layout(location = 2) in vec4 a_color;
uniform vec2 u_screen;
out vec2 v_uv;
out vec4 v_color;
void main() {
    v_uv = a_uv;
    v_color = a_color;
    gl_Position = vec4(a_pos.x / u_screen.x * 2.0 - 1.0, 1.0 - a_pos.y / u_screen.y * 2.0, 0.0, 1.0);
}
"#;

const FRAGMENT_SHADER: &str = r#"
precision mediump float;
uniform sampler2D u_atlas;
in vec2 v_uv;
in vec4 v_color;
out vec4 o_color;
void main() {
    o_color = vec4(v_color.rgb, v_color.a * texture(u_atlas, v_uv).r);
}
"#;

/// Draws triangle lists with the glyph atlas. Owns its GL objects.
pub struct Painter {
    gl: glow::Context,
    program: glow::Program,
    vao: glow::VertexArray,
    vbo: glow::Buffer,
    atlas: glow::Texture,
    u_screen: Option<glow::UniformLocation>,
    renderer: String,
}

impl std::fmt::Debug for Painter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Painter")
            .field("renderer", &self.renderer)
            .finish()
    }
}

impl Painter {
    /// Compiles the shaders and creates the buffers and the atlas texture. `gles`: the context
    /// is OpenGL ES 3.0 (else GL 3.3 core).
    pub fn new(gl: glow::Context, gles: bool) -> Result<Self, GpuError> {
        let header = if gles {
            "#version 300 es\n"
        } else {
            "#version 330 core\n"
        };
        // SAFETY: the caller made `gl`'s context current on this thread; the shader sources are
        // valid strings; every object created here is deleted in `Drop` by the same context.
        unsafe {
            let program = gl.create_program().map_err(GpuError::Gl)?;
            let mut shaders = vec![];
            for (kind, src) in [
                (glow::VERTEX_SHADER, VERTEX_SHADER),
                (glow::FRAGMENT_SHADER, FRAGMENT_SHADER),
            ] {
                let shader = gl.create_shader(kind).map_err(GpuError::Gl)?;
                gl.shader_source(shader, &format!("{header}{src}"));
                gl.compile_shader(shader);
                if !gl.get_shader_compile_status(shader) {
                    return Err(GpuError::Gl(format!(
                        "shader: {}",
                        gl.get_shader_info_log(shader)
                    )));
                }
                gl.attach_shader(program, shader);
                shaders.push(shader);
            }
            gl.link_program(program);
            if !gl.get_program_link_status(program) {
                return Err(GpuError::Gl(format!(
                    "link: {}",
                    gl.get_program_info_log(program)
                )));
            }
            for s in shaders {
                gl.detach_shader(program, s);
                gl.delete_shader(s);
            }
            let u_screen = gl.get_uniform_location(program, "u_screen");
            gl.use_program(Some(program));
            let u_atlas = gl.get_uniform_location(program, "u_atlas");
            gl.uniform_1_i32(u_atlas.as_ref(), 0);

            let vao = gl.create_vertex_array().map_err(GpuError::Gl)?;
            let vbo = gl.create_buffer().map_err(GpuError::Gl)?;
            gl.bind_vertex_array(Some(vao));
            gl.bind_buffer(glow::ARRAY_BUFFER, Some(vbo));
            let stride = std::mem::size_of::<Vertex>() as i32;
            for (loc, size, offset) in [(0u32, 2i32, 0i32), (1, 2, 8), (2, 4, 16)] {
                gl.enable_vertex_attrib_array(loc);
                gl.vertex_attrib_pointer_f32(loc, size, glow::FLOAT, false, stride, offset);
            }

            let atlas = gl.create_texture().map_err(GpuError::Gl)?;
            gl.active_texture(glow::TEXTURE0);
            gl.bind_texture(glow::TEXTURE_2D, Some(atlas));
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 1);
            gl.tex_image_2d(
                glow::TEXTURE_2D,
                0,
                glow::R8 as i32,
                ATLAS_SIZE as i32,
                ATLAS_SIZE as i32,
                0,
                glow::RED,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(None),
            );
            for (p, v) in [
                (glow::TEXTURE_MIN_FILTER, glow::NEAREST),
                (glow::TEXTURE_MAG_FILTER, glow::NEAREST),
                (glow::TEXTURE_WRAP_S, glow::CLAMP_TO_EDGE),
                (glow::TEXTURE_WRAP_T, glow::CLAMP_TO_EDGE),
            ] {
                gl.tex_parameter_i32(glow::TEXTURE_2D, p, v as i32);
            }
            gl.enable(glow::BLEND);
            gl.blend_func_separate(
                glow::SRC_ALPHA,
                glow::ONE_MINUS_SRC_ALPHA,
                glow::ONE,
                glow::ONE_MINUS_SRC_ALPHA,
            );
            gl.disable(glow::DEPTH_TEST);
            gl.disable(glow::CULL_FACE);
            let renderer = format!(
                "{} ({})",
                gl.get_parameter_string(glow::RENDERER),
                gl.get_parameter_string(glow::VERSION)
            );
            Ok(Self {
                gl,
                program,
                vao,
                vbo,
                atlas,
                u_screen,
                renderer,
            })
        }
    }

    /// The driver's renderer and version strings.
    pub fn renderer(&self) -> &str {
        &self.renderer
    }

    /// Draws one frame into the bound framebuffer: clears to `clear`, uploads the atlas rows that
    /// changed, draws `vertices`.
    pub fn paint(
        &mut self,
        width: u32,
        height: u32,
        clear: Color,
        vertices: &[Vertex],
        atlas: &mut Atlas,
    ) {
        let gl = &self.gl;
        let bytes: Vec<u8> = vertices
            .iter()
            .flatten()
            .flat_map(|f| f.to_ne_bytes())
            .collect();
        // SAFETY: the context is current on this thread (see the module doc); `bytes` and the
        // atlas rows outlive the calls that read them; the row range is within the texture.
        unsafe {
            gl.viewport(0, 0, width as i32, height as i32);
            gl.clear_color(clear[0], clear[1], clear[2], clear[3]);
            gl.clear(glow::COLOR_BUFFER_BIT);
            gl.use_program(Some(self.program));
            gl.uniform_2_f32(self.u_screen.as_ref(), width as f32, height as f32);
            gl.active_texture(glow::TEXTURE0);
            gl.bind_texture(glow::TEXTURE_2D, Some(self.atlas));
            if let Some((y0, y1)) = atlas.take_dirty() {
                let rows = (y0 * ATLAS_SIZE) as usize..(y1.min(ATLAS_SIZE) * ATLAS_SIZE) as usize;
                if let Some(pixels) = atlas.pixels().get(rows) {
                    gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 1);
                    gl.tex_sub_image_2d(
                        glow::TEXTURE_2D,
                        0,
                        0,
                        y0 as i32,
                        ATLAS_SIZE as i32,
                        (y1.min(ATLAS_SIZE) - y0) as i32,
                        glow::RED,
                        glow::UNSIGNED_BYTE,
                        glow::PixelUnpackData::Slice(Some(pixels)),
                    );
                }
            }
            gl.bind_vertex_array(Some(self.vao));
            gl.bind_buffer(glow::ARRAY_BUFFER, Some(self.vbo));
            gl.buffer_data_u8_slice(glow::ARRAY_BUFFER, &bytes, glow::STREAM_DRAW);
            gl.draw_arrays(glow::TRIANGLES, 0, vertices.len() as i32);
        }
    }

    /// Waits until the GPU finished every command issued (`glFinish`).
    pub fn finish(&self) {
        // SAFETY: the context is current on this thread.
        unsafe { self.gl.finish() }
    }

    /// Reads the bound framebuffer as RGBA rows, top row first.
    pub fn read_rgba(&self, width: u32, height: u32) -> Vec<u8> {
        let row = width as usize * 4;
        let mut pixels = vec![0u8; row * height as usize];
        // SAFETY: the context is current on this thread; `pixels` holds exactly width x height
        // RGBA bytes, and PACK_ALIGNMENT 1 makes GL write rows with no padding.
        unsafe {
            self.gl.pixel_store_i32(glow::PACK_ALIGNMENT, 1);
            self.gl.read_pixels(
                0,
                0,
                width as i32,
                height as i32,
                glow::RGBA,
                glow::UNSIGNED_BYTE,
                glow::PixelPackData::Slice(Some(&mut pixels)),
            );
        }
        // GL's first row is the bottom one.
        let mut flipped = Vec::with_capacity(pixels.len());
        for r in pixels.chunks_exact(row).rev() {
            flipped.extend_from_slice(r);
        }
        flipped
    }

    fn gl(&self) -> &glow::Context {
        &self.gl
    }
}

impl Drop for Painter {
    fn drop(&mut self) {
        // SAFETY: the objects were created by this context, which is still current on this
        // thread (the owners drop the painter before releasing the context).
        unsafe {
            self.gl.delete_program(self.program);
            self.gl.delete_vertex_array(self.vao);
            self.gl.delete_buffer(self.vbo);
            self.gl.delete_texture(self.atlas);
        }
    }
}
