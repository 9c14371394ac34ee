/*
 * The renderer side of the example display protocol in C over peerwire's C API: the same
 * conversation as the Rust display client (examples/src/lib.rs, run_display_client), printed
 * as "draw:" lines. Talks to the Rust display server or the C++ one.
 *
 *   display-client-c --socket PATH [--identity DIR]
 *
 * With --identity (made by `peerwire init --dir DIR`), mutual TLS. Events arrive on a library
 * thread through the subscription callback, which only queues them; this thread reacts, with
 * blocking calls and notifications.
 */
#include <peerwire.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pb.h"

#define MAX_EVENTS 64

typedef struct {
    char topic[64];
    uint64_t seq;
    uint8_t data[1024];
    size_t len;
} event;

/* Events queued by the subscription callback for the main thread. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    event items[MAX_EVENTS];
    size_t head, count;
    int overflow;
} queue;

static void on_event(void *user_data, const char *topic, uint64_t seq, const uint8_t *data, size_t len) {
    queue *q = user_data;
    pthread_mutex_lock(&q->mu);
    if (q->count == MAX_EVENTS || len > sizeof q->items[0].data) {
        q->overflow = 1;
    } else {
        event *e = &q->items[(q->head + q->count) % MAX_EVENTS];
        snprintf(e->topic, sizeof e->topic, "%s", topic);
        e->seq = seq;
        if (len > 0) {
            memcpy(e->data, data, len);
        }
        e->len = len;
        q->count++;
    }
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* The next event, waiting at most 10 s; 0 on a timeout. */
static int next_event(queue *q, event *out) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&q->mu);
    int rc = 0;
    while (q->count == 0 && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&q->cv, &q->mu, &until);
    }
    int got = q->count > 0;
    if (got) {
        *out = q->items[q->head];
        q->head = (q->head + 1) % MAX_EVENTS;
        q->count--;
    }
    pthread_mutex_unlock(&q->mu);
    return got;
}

static int fail(const char *what, peerwire_status s) {
    fprintf(stderr, "[client] %s: %s: %s\n", what, peerwire_status_name(s), peerwire_last_error());
    return 1;
}

static const char *state_name(uint64_t s) {
    static const char *names[] = {"UNKNOWN", "IDLE", "LISTENING", "THINKING", "SPEAKING"};
    return s < 5 ? names[s] : "UNKNOWN";
}

/* A blocking call; *out is the response, freed by the caller. */
static int call(peerwire_client *c, const char *method, const pb_writer *req, peerwire_buffer **out) {
    peerwire_status s = peerwire_client_call(c, method, req->buf, req->len, 0, out);
    return s == PEERWIRE_OK ? 0 : fail(method, s);
}

static int notify(peerwire_client *c, const char *topic, const pb_writer *ev) {
    peerwire_status s = peerwire_client_notify(c, topic, ev->buf, ev->len);
    return s == PEERWIRE_OK ? 0 : fail(topic, s);
}

int main(int argc, char **argv) {
    const char *socket = NULL, *identity = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--socket") == 0) socket = argv[i + 1];
        else if (strcmp(argv[i], "--identity") == 0) identity = argv[i + 1];
    }
    if (!socket) {
        fprintf(stderr, "usage: %s --socket PATH [--identity DIR]\n", argv[0]);
        return 2;
    }
    peerwire_status s = peerwire_harden_process();
    if (s != PEERWIRE_OK) return fail("hardening", s);
    static const char *namespaces[] = {"session_setup", "system", "template_runtime", "window_manager",
                                       "interaction_manager"};
    const uint32_t v1 = 1;
    peerwire_client_options *opts = NULL;
    if ((s = peerwire_client_options_new(socket, &opts)) != PEERWIRE_OK) return fail("options", s);
    peerwire_client_options_set_name(opts, "display-client-c");
    for (size_t i = 0; i < 5; i++) {
        peerwire_client_options_namespace(opts, namespaces[i], &v1, 1, true);
    }
    if (identity && (s = peerwire_client_options_tls(opts, PEERWIRE_TLS_MUTUAL, identity)) != PEERWIRE_OK) {
        peerwire_client_options_free(opts);
        return fail("tls", s);
    }
    peerwire_client *client = NULL;
    if ((s = peerwire_client_connect(opts, &client)) != PEERWIRE_OK) return fail("connect", s);
    printf("[client] connected over TLS %s\n", identity ? "mutual" : "off");

    uint8_t buf[1024];
    pb_writer w = {buf, sizeof buf, 0, 0};
    pb_put_string(&w, 1, "opengl-es");
    pb_put_uint(&w, 2, 1280);
    pb_put_uint(&w, 3, 800);
    pb_put_string(&w, 4, "WeatherTemplate");
    peerwire_buffer *resp = NULL;
    if (call(client, "session_setup.Initialize", &w, &resp)) return 1;
    char assistant[64] = "", locale[32] = "";
    char topics[8][64];
    const char *topic_ptrs[8];
    size_t ntopics = 0;
    pb_reader r = {peerwire_buffer_data(resp), peerwire_buffer_len(resp), 0, 0};
    pb_field f;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 2) pb_copy_string(&f, assistant, sizeof assistant);
        if (f.field == 2 && f.wire == 2) pb_copy_string(&f, locale, sizeof locale);
        if (f.field == 3 && f.wire == 2 && ntopics < 8) {
            pb_copy_string(&f, topics[ntopics], sizeof topics[0]);
            topic_ptrs[ntopics] = topics[ntopics];
            ntopics++;
        }
    }
    peerwire_buffer_free(resp);
    printf("[client] initialized: assistant %s (%s)\n", assistant, locale);

    queue q;
    memset(&q, 0, sizeof q);
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.cv, NULL);
    peerwire_subscription *sub = NULL;
    if ((s = peerwire_client_subscribe(client, topic_ptrs, ntopics, on_event, &q, &sub)) != PEERWIRE_OK)
        return fail("subscribe", s);
    printf("[client] subscribed to %zu topic(s)\n", ntopics);

    uint8_t win[64];
    pb_writer ww = {win, sizeof win, 0, 0};
    pb_put_string(&ww, 1, "main");
    pb_put_uint(&ww, 2, 1280);
    pb_put_uint(&ww, 3, 800);
    w.len = 0;
    pb_put_bytes(&w, 1, win, ww.len);
    if (call(client, "window_manager.SetVisibleWindows", &w, &resp)) return 1;
    r = (pb_reader){peerwire_buffer_data(resp), peerwire_buffer_len(resp), 0, 0};
    uint64_t accepted = 0;
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 0) accepted = f.value;
    }
    peerwire_buffer_free(resp);
    printf("[client] window manager accepted %llu window(s)\n", (unsigned long long)accepted);

    w.len = 0;
    pb_put_string(&w, 1, "1.0");
    if (notify(client, "session_setup.ClientInitialized", &w)) return 1;

    int talked = 0, rendered = 0, done = 0;
    event ev;
    while (!done) {
        if (!next_event(&q, &ev)) {
            fprintf(stderr, "[client] no event from the server in time\n");
            return 1;
        }
        r = (pb_reader){ev.data, ev.len, 0, 0};
        if (strcmp(ev.topic, "system.SetAlexaState") == 0) {
            uint64_t state = 0;
            while (pb_next(&r, &f)) {
                if (f.field == 1 && f.wire == 0) state = f.value;
            }
            printf("[client] draw: attention bar %s (event #%llu)\n", state_name(state), (unsigned long long)ev.seq);
            if (state == 1 && !talked) {
                talked = 1;
                printf("[client] user presses the talk button\n");
                w.len = 0;
                pb_put_uint(&w, 1, 1);
                pb_put_uint(&w, 2, 1);
                if (notify(client, "interaction_manager.Key", &w)) return 1;
            } else if (state == 1 && rendered) {
                printf("[client] user taps \"dismiss\"\n");
                w.len = 0;
                pb_put_uint(&w, 1, 1200);
                pb_put_uint(&w, 2, 40);
                pb_put_string(&w, 3, "dismiss");
                if (notify(client, "interaction_manager.Touch", &w)) return 1;
            }
        } else if (strcmp(ev.topic, "system.CompleteAuthorization") == 0) {
            char url[128] = "", code[32] = "";
            while (pb_next(&r, &f)) {
                if (f.field == 1 && f.wire == 2) pb_copy_string(&f, url, sizeof url);
                if (f.field == 2 && f.wire == 2) pb_copy_string(&f, code, sizeof code);
            }
            printf("[client] draw: sign-in screen: visit %s and enter %s\n", url, code);
        } else if (strcmp(ev.topic, "template_runtime.RenderTemplate") == 0) {
            char type[64] = "", title[64] = "";
            while (pb_next(&r, &f)) {
                if (f.field == 1 && f.wire == 2) pb_copy_string(&f, type, sizeof type);
                if (f.field == 3 && f.wire == 2) pb_copy_string(&f, title, sizeof title);
            }
            rendered = 1;
            printf("[client] draw: %s \"%s\"\n", type, title);
        } else if (strcmp(ev.topic, "template_runtime.ClearTemplate") == 0) {
            char token[64] = "";
            while (pb_next(&r, &f)) {
                if (f.field == 1 && f.wire == 2) pb_copy_string(&f, token, sizeof token);
            }
            printf("[client] draw: clear template %s\n", token);
            done = 1;
        }
        if (r.error) {
            fprintf(stderr, "[client] an event on %s does not decode\n", ev.topic);
            return 1;
        }
    }

    w.len = 0;
    if (call(client, "system.GetState", &w, &resp)) return 1;
    uint64_t state = 0, authorized = 0, inputs = 0;
    char template_token[64] = "";
    r = (pb_reader){peerwire_buffer_data(resp), peerwire_buffer_len(resp), 0, 0};
    while (pb_next(&r, &f)) {
        if (f.field == 1 && f.wire == 0) state = f.value;
        if (f.field == 2 && f.wire == 0) authorized = f.value;
        if (f.field == 4 && f.wire == 0) inputs = f.value;
        if (f.field == 5 && f.wire == 2) pb_copy_string(&f, template_token, sizeof template_token);
    }
    peerwire_buffer_free(resp);
    printf("[client] GetState: assistant %s, authorized %s, %llu input event(s) received, template \"%s\"\n",
           state_name(state), authorized ? "true" : "false", (unsigned long long)inputs, template_token);
    peerwire_subscription_free(sub);
    peerwire_client_close(client);
    peerwire_client_free(client);
    pthread_cond_destroy(&q.cv);
    pthread_mutex_destroy(&q.mu);
    printf("[client] closed\n");
    return q.overflow ? 1 : 0;
}
