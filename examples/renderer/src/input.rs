//! Input: the keys the renderer knows, and the scripted input file that headless mode replays
//! through the same path as a window's mouse, touch and keys.
//!
//! Script format, one step per line (`#` starts a comment):
//!
//! ```text
//! wait <text>          # until the scene's label contains <text> (see Scene::label)
//! frames <n>           # let n frames pass
//! key <talk|back|exit> <down|up>
//! tap <x> <y>          # a touch at window pixels; the element is hit-tested on the frame shown
//! snapshot <name>      # write the frame being drawn as <out>/<name>.png
//! quit                 # say goodbye and exit
//! ```

use peerwire_examples::display::KeyCode;

/// One scripted step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Block the script until the scene label contains this text.
    Wait(String),
    /// Block the script for this many frames.
    Frames(u32),
    /// A key event.
    Key(KeyCode, bool),
    /// A tap at window pixels.
    Tap(u32, u32),
    /// Write the frame being drawn under this name.
    Snapshot(String),
    /// Stop the renderer.
    Quit,
}

/// What the script asks of the current frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver a key event.
    Key(KeyCode, bool),
    /// Deliver a tap.
    Tap(u32, u32),
    /// Write this frame under this name.
    Snapshot(String),
    /// Stop.
    Quit,
}

/// A script could not be read.
#[derive(Debug, thiserror::Error)]
#[error("input script line {line}: {message}")]
pub struct ScriptError {
    line: usize,
    message: String,
}

/// The key named in a script or by a keyboard key: `talk`, `back`, `exit`.
pub fn key_by_name(name: &str) -> Option<KeyCode> {
    match name {
        "talk" => Some(KeyCode::Talk),
        "back" => Some(KeyCode::Back),
        "exit" => Some(KeyCode::Exit),
        _ => None,
    }
}

/// A parsed script and where its replay stands.
#[derive(Debug, Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
    next: usize,
    frames_left: Option<u32>,
}

impl Script {
    /// Parses a script.
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        let mut steps = vec![];
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| ScriptError {
                line: i + 1,
                message,
            };
            let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let args: Vec<&str> = rest.split_whitespace().collect();
            let number = |s: Option<&&str>, what: &str| -> Result<u32, ScriptError> {
                s.and_then(|s| s.parse().ok())
                    .ok_or_else(|| err(format!("{cmd}: {what} must be a number")))
            };
            let step = match cmd {
                "wait" if !rest.trim().is_empty() => Step::Wait(rest.trim().to_owned()),
                "frames" => Step::Frames(number(args.first(), "the count")?),
                "key" => {
                    let key = args
                        .first()
                        .and_then(|k| key_by_name(k))
                        .ok_or_else(|| err("key: expected talk, back or exit".into()))?;
                    let pressed = match args.get(1) {
                        Some(&"down") => true,
                        Some(&"up") => false,
                        _ => return Err(err("key: expected down or up".into())),
                    };
                    Step::Key(key, pressed)
                }
                "tap" => Step::Tap(number(args.first(), "x")?, number(args.get(1), "y")?),
                "snapshot"
                    if args.len() == 1
                        && args.iter().all(|a| {
                            a.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        }) =>
                {
                    Step::Snapshot(rest.trim().to_owned())
                }
                "quit" => Step::Quit,
                _ => return Err(err(format!("unknown or incomplete step {line:?}"))),
            };
            steps.push(step);
        }
        Ok(Self {
            steps,
            next: 0,
            frames_left: None,
        })
    }

    /// Runs the steps due on this frame, whose scene has `label`; stops at the first step that
    /// must wait.
    pub fn advance(&mut self, label: &str) -> Vec<Action> {
        let mut actions = vec![];
        while let Some(step) = self.steps.get(self.next) {
            match step {
                Step::Wait(text) => {
                    if !label.contains(text.as_str()) {
                        break;
                    }
                }
                Step::Frames(n) => {
                    let left = self.frames_left.get_or_insert(*n);
                    if *left > 0 {
                        *left -= 1;
                        break;
                    }
                    self.frames_left = None;
                }
                Step::Key(k, p) => actions.push(Action::Key(*k, *p)),
                Step::Tap(x, y) => actions.push(Action::Tap(*x, *y)),
                Step::Snapshot(name) => actions.push(Action::Snapshot(name.clone())),
                Step::Quit => {
                    actions.push(Action::Quit);
                    self.next = self.steps.len();
                    break;
                }
            }
            self.next += 1;
        }
        actions
    }

    /// True when every step ran.
    pub fn done(&self) -> bool {
        self.next >= self.steps.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn steps_wait_for_labels_and_frames() {
        let mut s = Script::parse(
            "# demo\nwait content=list\nframes 2\ntap 10 20 # a row\nkey talk down\nsnapshot after-tap\nquit\n",
        )
        .unwrap();
        assert!(s.advance("content=home").is_empty());
        assert!(s.advance("content=list:Groceries").is_empty());
        assert!(s.advance("content=list:Groceries").is_empty());
        assert_eq!(
            s.advance("content=list:Groceries"),
            vec![
                Action::Tap(10, 20),
                Action::Key(KeyCode::Talk, true),
                Action::Snapshot("after-tap".into()),
                Action::Quit
            ]
        );
        assert!(s.done());
    }

    #[test]
    fn bad_scripts_name_the_line() {
        for (text, line) in [
            ("tap 1", 1),
            ("wait x\nkey jump down", 2),
            ("\n\nfly", 3),
            ("snapshot ../x", 1),
            ("frames -1", 1),
        ] {
            let e = Script::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("input script line {line}:")), "{e}");
        }
    }
}
