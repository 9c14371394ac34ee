// The peerwire display client for a browser: one WebSocket session at a time to the server that
// served this page, speaking the envelope of proto/peerwire/v1 and the display protocol of
// proto/display/v1 (docs/web-client.md). Each session starts with a fresh one-time token asked
// of the launcher (`peerwire launch-browser`) through the DevTools binding it installs; the
// token travels only in the WebSocket subprotocol header, never in a URL.

// proto.js (generated from proto/ by gen.mjs) over vendor/protobuf.min.js (protobufjs's minimal
// runtime): static encoders and decoders, no eval.
const { peerwire: { v1: pw }, display: { v1: display } } = globalThis.protobuf.roots.default;
const { Frame, SubscribeRequest, SubscribeResponse, Code } = pw;
const { State, KeyCode } = display;

const SUBPROTOCOL = "peerwire.v1";
const TOKEN_PREFIX = "peerwire.token.";
const NAMESPACES = ["session_setup", "system", "template_runtime", "window_manager", "interaction_manager"];
// What each pushed topic carries, and how it is drawn.
const TOPICS = {
  "system.SetAlexaState": [display.AlexaState, drawState],
  "system.CompleteAuthorization": [display.AuthorizationCode, drawSignIn],
  "template_runtime.RenderTemplate": [display.RenderTemplate, drawTemplate],
  "template_runtime.ClearTemplate": [display.ClearTemplate, clearTemplate],
};
const CALL_TIMEOUT_MS = 10000;

const $ = (id) => document.getElementById(id);

function log(line) {
  console.log(`peerwire-web: ${line}`);
  const item = document.createElement("li");
  item.textContent = line;
  $("log").prepend(item);
  while ($("log").children.length > 6) $("log").lastChild.remove();
}

function setStatus(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
}

// Tokens: the launcher installs window.peerwireRequestToken (a DevTools binding, so calling it
// only sends a message to the launcher) and answers by calling window.peerwireDeliverToken.
let tokenWaiter = null;
Object.defineProperty(window, "peerwireDeliverToken", {
  value: (token) => {
    const deliver = tokenWaiter;
    tokenWaiter = null;
    if (deliver) deliver(token);
  },
});

async function freshToken() {
  while (typeof window.peerwireRequestToken !== "function") {
    setStatus("waiting", "waiting for the launcher");
    await new Promise((r) => setTimeout(r, 100));
  }
  return new Promise((resolve, reject) => {
    tokenWaiter = resolve;
    setTimeout(() => reject(new Error("the launcher sent no token")), CALL_TIMEOUT_MS);
    window.peerwireRequestToken("");
  });
}

// One WebSocket session: the handshake, then calls, notifications and pushes.
class Session {
  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.calls = new Map();
    this.seq = new Map();
    this.welcome = null;
    this.closed = new Promise((resolve) => {
      ws.onclose = (ev) => {
        for (const { reject } of this.calls.values()) reject(new Error("session closed"));
        this.calls.clear();
        resolve(ev);
      };
    });
    this.handshake = new Promise((resolve, reject) => {
      this.welcomed = resolve;
      this.rejected = reject;
      this.closed.then((ev) => reject(new Error(`closed before Welcome (${ev.code} ${ev.reason})`)));
    });
    // Refused before the handshake began: nobody waits for it, and that is not an error.
    this.handshake.catch(() => {});
    ws.onmessage = (ev) => this.receive(new Uint8Array(ev.data));
  }

  send(frame) {
    this.ws.send(Frame.encode(Frame.create(frame)).finish());
  }

  hello() {
    this.send({
      hello: {
        protocolVersions: [1],
        clientName: "web-display",
        namespaces: NAMESPACES.map((namespace) => ({ namespace, versions: [1], required: true })),
      },
    });
    return this.handshake;
  }

  call(method, Request, message, Response) {
    const id = this.nextId++;
    const payload = Request.encode(Request.create(message)).finish();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        reject(new Error(`${method}: no response`));
      }, CALL_TIMEOUT_MS);
      this.calls.set(id, {
        resolve: (p) => { clearTimeout(timer); resolve(Response.decode(p)); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.send({ request: { id, method, payload, deadlineMs: CALL_TIMEOUT_MS } });
    });
  }

  notify(topic, Message, message) {
    const seq = (this.seq.get(topic) ?? 0) + 1;
    this.seq.set(topic, seq);
    this.send({ event: { topic, seq, payload: Message.encode(Message.create(message)).finish() } });
  }

  receive(bytes) {
    let frame;
    try {
      frame = Frame.decode(bytes);
    } catch (e) {
      log(`undecodable frame: ${e.message}`);
      this.ws.close(1002, "bad frame");
      return;
    }
    switch (frame.kind) {
      case "welcome":
        this.welcome = frame.welcome;
        this.welcomed(frame.welcome);
        break;
      case "reject":
        this.rejected(new Error(`Reject ${Code[frame.reject.code]}: ${frame.reject.reason}`));
        break;
      case "response": {
        const r = frame.response;
        const call = this.calls.get(Number(r.id));
        if (!call) break;
        this.calls.delete(Number(r.id));
        if (r.code) call.reject(new Error(`${Code[r.code] ?? r.code}: ${r.message}`));
        else call.resolve(r.payload);
        break;
      }
      case "event": {
        const handler = TOPICS[frame.event.topic];
        if (handler) handler[1](handler[0].decode(frame.event.payload), this);
        break;
      }
      case "ping":
        this.send({ pong: { nonce: frame.ping.nonce } });
        break;
      case "goodbye":
        log(`server says goodbye: ${Code[frame.goodbye.code]} ${frame.goodbye.reason}`);
        break;
      default:
        log(`unexpected ${frame.kind} frame`);
    }
  }
}

let current = null;

function drawState(msg) {
  const name = State[msg.state]?.replace("STATE_", "") ?? "UNKNOWN";
  $("attention").textContent = name;
  $("attention").dataset.attention = name;
}

function drawSignIn(msg) {
  $("signin").textContent = `Sign in: visit ${msg.url} and enter ${msg.code}`;
  $("signin").hidden = false;
}

function drawTemplate(msg) {
  $("signin").hidden = true;
  const card = $("template");
  card.dataset.token = msg.token;
  card.dataset.type = msg.templateType;
  $("template-title").textContent = msg.title;
  const fields = $("template-fields");
  fields.replaceChildren();
  for (const key of Object.keys(msg.fields).sort()) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = msg.fields[key];
    fields.append(dt, dd);
  }
  card.hidden = false;
  log(`rendered ${msg.templateType} "${msg.title}"`);
}

function clearTemplate(msg) {
  const card = $("template");
  if (!msg.token || card.dataset.token === msg.token) {
    card.hidden = true;
    delete card.dataset.token;
    log(`cleared template ${msg.token}`);
  }
}

// Input: the talk button and keys are the device's keys; any other tap is a touch.
function sendKey(key) {
  if (!current) return;
  current.notify("interaction_manager.Key", display.KeyEvent, { key, pressed: true });
  log(`key ${KeyCode[key]}`);
}

document.addEventListener("click", (ev) => {
  if (!current) return;
  const element = ev.target.closest?.("[data-element]")?.dataset.element ?? "";
  if (element === "talk") return sendKey(KeyCode.KEY_CODE_TALK);
  const x = Math.max(0, Math.round(ev.clientX));
  const y = Math.max(0, Math.round(ev.clientY));
  current.notify("interaction_manager.Touch", display.TouchEvent, { x, y, element });
  log(`touch (${x}, ${y}) ${element}`);
});

const KEYS = { " ": KeyCode.KEY_CODE_TALK, t: KeyCode.KEY_CODE_TALK, Backspace: KeyCode.KEY_CODE_BACK, Escape: KeyCode.KEY_CODE_EXIT };
document.addEventListener("keydown", (ev) => {
  const key = KEYS[ev.key];
  if (key === undefined || ev.repeat) return;
  ev.preventDefault();
  sendKey(key);
});

// One session from token to close; resolves with how it ended.
async function runSession() {
  setStatus("token", "asking the launcher for a token");
  const token = await freshToken();
  setStatus("connecting", "connecting");
  // The server that served this page, unless the page names another endpoint.
  const url = document.querySelector('meta[name="peerwire-endpoint"]')?.content ?? `wss://${location.host}/peerwire`;
  const ws = new WebSocket(url, [SUBPROTOCOL, TOKEN_PREFIX + token]);
  ws.binaryType = "arraybuffer";
  const session = new Session(ws);
  const opened = await new Promise((resolve) => {
    ws.onopen = () => resolve(true);
    session.closed.then(() => resolve(false));
  });
  if (!opened) {
    const ev = await session.closed;
    return `refused at upgrade (${ev.code})`;
  }
  if (ws.protocol !== SUBPROTOCOL) {
    ws.close(1002, "wrong subprotocol");
    return `server chose subprotocol ${JSON.stringify(ws.protocol)}`;
  }
  try {
    const welcome = await session.hello();
    current = session;
    setStatus("connected", `connected: session ${welcome.sessionId} to ${welcome.serverName}`);
    log(`welcome: session ${welcome.sessionId}`);
    const init = await session.call("session_setup.Initialize", display.InitializeRequest, {
      renderer: "chromium",
      width: innerWidth,
      height: innerHeight,
      supportedTemplates: ["WeatherTemplate"],
    }, display.InitializeResponse);
    log(`initialized: assistant ${init.assistantName} (${init.locale})`);
    const topics = init.topics.length ? init.topics : Object.keys(TOPICS);
    await session.call("peerwire.Subscribe", SubscribeRequest, { topics }, SubscribeResponse);
    await session.call("window_manager.SetVisibleWindows", display.WindowReport, {
      windows: [{ id: "main", width: innerWidth, height: innerHeight }],
    }, display.WindowAck);
    session.notify("session_setup.ClientInitialized", display.ClientInitialized, { rendererVersion: "web-1.0" });
  } catch (e) {
    ws.close(1000, "client error");
    log(e.message);
  }
  const ev = await session.closed;
  current = null;
  return `closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`;
}

// Sessions forever, each with a fresh token; the pause grows while sessions fail quickly.
let pause = 500;
for (;;) {
  const started = Date.now();
  let ended;
  try {
    ended = await runSession();
  } catch (e) {
    ended = e.message;
  }
  log(`session ended: ${ended}`);
  setStatus("closed", `disconnected: ${ended}; reconnecting`);
  pause = Date.now() - started > 10000 ? 500 : Math.min(pause * 2, 8000);
  await new Promise((r) => setTimeout(r, pause));
}
