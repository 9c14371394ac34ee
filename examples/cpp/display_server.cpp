// The SDK side of the example display protocol (proto/display/v1/display.proto) in C++17 over
// peerwire's C API: the same methods, events and pushes as the Rust display server
// (examples/src/lib.rs), so the Rust display client (and the renderer) can talk to it.
//
//   display-server-cpp --socket PATH [--identity DIR] [--allow-uid UID]...
//
// With --identity (made by `peerwire init --dir DIR`), mutual TLS. It serves until SIGINT or
// SIGTERM. Requests are handed to an "SDK executor" thread of its own, which answers through
// the responder later, as an SDK would from its own executor; pushes go out from there too.
#include <peerwire.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pb.h"

namespace {

constexpr const char *kTopicState = "system.SetAlexaState";
constexpr const char *kTopicAuth = "system.CompleteAuthorization";
constexpr const char *kTopicRender = "template_runtime.RenderTemplate";
constexpr const char *kTopicClear = "template_runtime.ClearTemplate";
constexpr const char *kNamespaces[] = {"session_setup", "system", "template_runtime",
                                       "window_manager", "interaction_manager"};
enum State { kUnknown = 0, kIdle = 1, kListening = 2, kThinking = 3, kSpeaking = 4 };
enum KeyCode { kTalk = 1 };

// Encodes a message into a byte vector.
class Writer {
  public:
    Writer() : buf_(4096), w_{buf_.data(), buf_.size(), 0, 0} {}
    pb_writer *get() { return &w_; }
    std::vector<uint8_t> bytes() const {
        return std::vector<uint8_t>(buf_.begin(), buf_.begin() + static_cast<long>(w_.len));
    }

  private:
    std::vector<uint8_t> buf_;
    pb_writer w_;
};

// The SDK's executor: one thread running queued jobs in order.
class Executor {
  public:
    Executor() : thread_([this] { Run(); }) {}
    ~Executor() { Stop(); }
    // Runs the jobs queued so far, then ends the thread.
    void Stop() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) {
            thread_.join();
        }
    }
    void Post(std::function<void()> job) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            jobs_.push_back(std::move(job));
        }
        cv_.notify_one();
    }

  private:
    void Run() {
        for (;;) {
            std::function<void()> job;
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
                if (jobs_.empty()) {
                    return;
                }
                job = std::move(jobs_.front());
                jobs_.pop_front();
            }
            job();
        }
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> jobs_;
    bool stop_ = false;
    std::thread thread_;
};

struct Display {
    std::mutex mu;
    int state = kUnknown;
    bool authorized = false;
    std::string current_template;
    std::atomic<uint32_t> inputs{0};
    std::atomic<peerwire_server *> server{nullptr};
    Executor executor;
};

void Log(const std::string &line) {
    std::printf("[server] %s\n", line.c_str());
    std::fflush(stdout);
}

void Check(peerwire_status s, const char *what) {
    if (s != PEERWIRE_OK) {
        std::fprintf(stderr, "%s: %s: %s\n", what, peerwire_status_name(s), peerwire_last_error());
    }
}

void Answer(peerwire_responder *responder, const Writer &w) {
    auto bytes = w.bytes();
    Check(peerwire_responder_send(responder, bytes.data(), bytes.size()), "answering");
}

void Broadcast(peerwire_server *server, const char *topic, const Writer &w) {
    auto bytes = w.bytes();
    size_t delivered = 0;
    Check(peerwire_server_broadcast(server, topic, bytes.data(), bytes.size(), &delivered), topic);
}

void SetState(Display *d, peerwire_server *server, State state) {
    {
        std::lock_guard<std::mutex> lock(d->mu);
        d->state = state;
    }
    Writer w;
    pb_put_uint(w.get(), 1, state);
    Broadcast(server, kTopicState, w);
}

std::string Name(const char *s) { return s ? s : ""; }

// session_setup.Initialize: InitializeRequest -> InitializeResponse.
void Initialize(void *user_data, const peerwire_peer_info *peer, const uint8_t *req, size_t len,
                peerwire_responder *responder) {
    auto *d = static_cast<Display *>(user_data);
    uint64_t width = 0, height = 0;
    std::string renderer;
    pb_reader r{req, len, 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 2) renderer.assign(reinterpret_cast<const char *>(f.data), f.len);
        if (f.field == 2 && f.wire == 0) width = f.value;
        if (f.field == 3 && f.wire == 0) height = f.value;
    }
    if (r.error) {
        Check(peerwire_responder_error(responder, PEERWIRE_CODE_INVALID_ARGUMENT,
                                       "InitializeRequest does not decode"),
              "refusing");
        return;
    }
    Log("Initialize from " + Name(peer->client_name) + " (uid " + std::to_string(peer->uid) +
        "): " + std::to_string(width) + "x" + std::to_string(height) + " renderer \"" + renderer +
        "\"");
    // Answered later, from the SDK's executor thread.
    d->executor.Post([responder] {
        Writer w;
        pb_put_string(w.get(), 1, "Alexa");
        pb_put_string(w.get(), 2, "en-US");
        for (const char *t : {kTopicState, kTopicAuth, kTopicRender, kTopicClear}) {
            pb_put_string(w.get(), 3, t);
        }
        Answer(responder, w);
    });
}

// system.GetState: GetStateRequest -> SystemState.
void GetState(void *user_data, const peerwire_peer_info *, const uint8_t *, size_t,
              peerwire_responder *responder) {
    auto *d = static_cast<Display *>(user_data);
    d->executor.Post([d, responder] {
        Writer w;
        std::lock_guard<std::mutex> lock(d->mu);
        pb_put_uint(w.get(), 1, static_cast<uint64_t>(d->state));
        pb_put_uint(w.get(), 2, d->authorized ? 1 : 0);
        pb_put_string(w.get(), 3, "en-US");
        pb_put_uint(w.get(), 4, d->inputs.load());
        pb_put_string(w.get(), 5, d->current_template.c_str());
        Answer(responder, w);
    });
}

// window_manager.SetVisibleWindows: WindowReport -> WindowAck, answered at once.
void SetVisibleWindows(void *, const peerwire_peer_info *, const uint8_t *req, size_t len,
                       peerwire_responder *responder) {
    uint64_t windows = 0;
    pb_reader r{req, len, 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 2) windows++;
    }
    Log("renderer reports " + std::to_string(windows) + " window(s)");
    Writer w;
    pb_put_uint(w.get(), 1, windows);
    Answer(responder, w);
}

// session_setup.ClientInitialized: send the sign-in code to this client, then go idle.
void ClientInitialized(void *user_data, const peerwire_peer_info *peer, const uint8_t *ev,
                       size_t len) {
    auto *d = static_cast<Display *>(user_data);
    std::string version;
    pb_reader r{ev, len, 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 2) version.assign(reinterpret_cast<const char *>(f.data), f.len);
    }
    Log("client initialized (renderer " + version + "); asking the user to sign in");
    uint64_t conn = peer->connection;
    peerwire_server *server = peer->server;
    d->executor.Post([d, server, conn] {
        Writer w;
        pb_put_string(w.get(), 1, "https://amazon.com/us/code");
        pb_put_string(w.get(), 2, "PW7Q2X");
        auto bytes = w.bytes();
        Check(peerwire_server_push(server, conn, kTopicAuth, bytes.data(), bytes.size()), kTopicAuth);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        {
            std::lock_guard<std::mutex> lock(d->mu);
            d->authorized = true;
        }
        SetState(d, server, kIdle);
    });
}

// interaction_manager.Key: the talk button runs an interaction.
void Key(void *user_data, const peerwire_peer_info *peer, const uint8_t *ev, size_t len) {
    auto *d = static_cast<Display *>(user_data);
    d->inputs++;
    uint64_t key = 0, pressed = 0;
    pb_reader r{ev, len, 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 0) key = f.value;
        if (f.field == 2 && f.wire == 0) pressed = f.value;
    }
    if (key != kTalk || !pressed) {
        return;
    }
    Log("talk button pressed: running an interaction");
    peerwire_server *server = peer->server;
    d->executor.Post([d, server] {
        SetState(d, server, kListening);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        SetState(d, server, kThinking);
        Writer w;
        pb_put_string(w.get(), 1, "WeatherTemplate");
        pb_put_string(w.get(), 2, "weather-1");
        pb_put_string(w.get(), 3, "Seattle");
        for (auto kv : std::map<std::string, std::string>{{"temperature", "12°C"},
                                                          {"condition", "Cloudy"}}) {
            Writer entry;
            pb_put_string(entry.get(), 1, kv.first.c_str());
            pb_put_string(entry.get(), 2, kv.second.c_str());
            auto e = entry.bytes();
            pb_put_bytes(w.get(), 4, e.data(), e.size());
        }
        {
            std::lock_guard<std::mutex> lock(d->mu);
            d->current_template = "weather-1";
        }
        Broadcast(server, kTopicRender, w);
        SetState(d, server, kSpeaking);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        SetState(d, server, kIdle);
    });
}

// interaction_manager.Touch: "dismiss" clears the template.
void Touch(void *user_data, const peerwire_peer_info *peer, const uint8_t *ev, size_t len) {
    auto *d = static_cast<Display *>(user_data);
    d->inputs++;
    uint64_t x = 0, y = 0;
    std::string element;
    pb_reader r{ev, len, 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 0) x = f.value;
        if (f.field == 2 && f.wire == 0) y = f.value;
        if (f.field == 3 && f.wire == 2) element.assign(reinterpret_cast<const char *>(f.data), f.len);
    }
    Log("touch at (" + std::to_string(x) + ", " + std::to_string(y) + ") on \"" + element + "\"");
    if (element != "dismiss") {
        return;
    }
    std::string token;
    {
        std::lock_guard<std::mutex> lock(d->mu);
        token.swap(d->current_template);
    }
    Writer w;
    pb_put_string(w.get(), 1, token.c_str());
    Broadcast(peer->server, kTopicClear, w);
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char **argv) {
    const char *socket = nullptr;
    const char *identity = nullptr;
    std::vector<uint32_t> uids;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--socket") == 0) socket = argv[i + 1];
        else if (std::strcmp(argv[i], "--identity") == 0) identity = argv[i + 1];
        else if (std::strcmp(argv[i], "--allow-uid") == 0) uids.push_back(static_cast<uint32_t>(std::stoul(argv[i + 1])));
    }
    if (!socket) {
        std::fprintf(stderr, "usage: %s --socket PATH [--identity DIR] [--allow-uid UID]...\n", argv[0]);
        return 2;
    }
    peerwire_log_init("info");
    Check(peerwire_harden_process(), "hardening");
    Display display;
    peerwire_server_options *opts = nullptr;
    if (peerwire_server_options_new(socket, &opts) != PEERWIRE_OK) {
        std::fprintf(stderr, "options: %s\n", peerwire_last_error());
        return 1;
    }
    peerwire_server_options_set_name(opts, "display-server-cpp");
    const uint32_t v1 = 1;
    for (const char *ns : kNamespaces) {
        peerwire_server_options_namespace(opts, ns, &v1, 1);
    }
    for (uint32_t uid : uids) {
        peerwire_server_options_allow_uid(opts, uid);
    }
    if (identity) {
        Check(peerwire_server_options_tls(opts, PEERWIRE_TLS_MUTUAL, identity, false), "tls");
    }
    peerwire_server_options_method(opts, "session_setup.Initialize", Initialize, &display);
    peerwire_server_options_method(opts, "system.GetState", GetState, &display);
    peerwire_server_options_method(opts, "window_manager.SetVisibleWindows", SetVisibleWindows, &display);
    peerwire_server_options_on_event(opts, "session_setup.ClientInitialized", ClientInitialized, &display);
    peerwire_server_options_on_event(opts, "interaction_manager.Key", Key, &display);
    peerwire_server_options_on_event(opts, "interaction_manager.Touch", Touch, &display);
    peerwire_server *server = nullptr;
    peerwire_status s = peerwire_server_start(opts, &server);  // consumes opts
    if (s != PEERWIRE_OK) {
        std::fprintf(stderr, "start: %s: %s\n", peerwire_status_name(s), peerwire_last_error());
        return 1;
    }
    display.server = server;
    Log(std::string("listening on ") + socket + (identity ? " (mutual TLS)" : ""));
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    while (!g_stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    peerwire_stats stats;
    peerwire_server_stats(server, &stats);
    Log("shutting down: " + std::to_string(stats.sessions) + " session(s), " +
        std::to_string(stats.requests) + " request(s), " + std::to_string(stats.events_sent) +
        " event(s) pushed");
    Check(peerwire_server_shutdown(server), "shutdown");
    Check(peerwire_server_wait(server, 10000), "wait");
    // No callback runs now; the executor's last jobs still use the server, so it goes first.
    display.executor.Stop();
    Check(peerwire_server_free(server), "free");
    return 0;
}
