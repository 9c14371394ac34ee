/*
 * A conversation through the C API in one process, for the sanitizer run of `cargo xtask ffi`
 * (built with -fsanitize=address,undefined): a server and a client, N calls (blocking from two
 * threads, and asynchronous; a quarter answered from another thread), N events pushed by the
 * server and N notifications sent by the client, every count and sequence number checked; then
 * misuse that must be refused (NULL pointers, bad lengths, a bad topic), and everything freed.
 *
 *   stress SOCKET_PATH [N]      (N defaults to 10000)
 */
#include <peerwire.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROGRAM "stress"
#include "check.h"

static long n_total = 10000;

/* Responders handed to a thread of ours, answered from there. */
#define LATER_MAX 64
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    peerwire_responder *items[LATER_MAX];
    uint8_t data[LATER_MAX][64];
    size_t len[LATER_MAX];
    int count, stop;
} later = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, {{0}}, {0}, 0, 0};

static void *answer_later(void *arg) {
    (void)arg;
    pthread_mutex_lock(&later.mu);
    for (;;) {
        while (later.count == 0 && !later.stop) pthread_cond_wait(&later.cv, &later.mu);
        if (later.count == 0) break;
        int i = --later.count;
        peerwire_responder *r = later.items[i];
        uint8_t copy[64];
        size_t len = later.len[i];
        memcpy(copy, later.data[i], len);
        pthread_mutex_unlock(&later.mu);
        CHECK("answering later", peerwire_responder_send(r, copy, len));
        pthread_mutex_lock(&later.mu);
    }
    pthread_mutex_unlock(&later.mu);
    return NULL;
}

static atomic_long echoes;

static void echo(void *user_data, const peerwire_peer_info *peer, const uint8_t *req, size_t len,
                 peerwire_responder *responder) {
    (void)user_data;
    if (peer == NULL || strcmp(peer->name, "stress.Echo") != 0 || peer->uid != getuid() || len > 64) {
        peerwire_responder_error(responder, PEERWIRE_CODE_INVALID_ARGUMENT, "unexpected request");
        return;
    }
    long n = atomic_fetch_add(&echoes, 1);
    if (n % 4 == 0) {
        pthread_mutex_lock(&later.mu);
        if (later.count < LATER_MAX) {
            int i = later.count++;
            later.items[i] = responder;
            memcpy(later.data[i], req, len);
            later.len[i] = len;
            pthread_cond_signal(&later.cv);
            pthread_mutex_unlock(&later.mu);
            return;
        }
        pthread_mutex_unlock(&later.mu);
    }
    CHECK("answering", peerwire_responder_send(responder, req, len));
}

static void fail_method(void *user_data, const peerwire_peer_info *peer, const uint8_t *req, size_t len,
                        peerwire_responder *responder) {
    (void)user_data, (void)peer, (void)req, (void)len;
    CHECK("failing", peerwire_responder_error(responder, PEERWIRE_CODE_NOT_FOUND, "no such thing"));
}

static atomic_long notes;
static void on_note(void *user_data, const peerwire_peer_info *peer, const uint8_t *ev, size_t len) {
    (void)user_data, (void)peer;
    if (len == 8) {
        long v;
        memcpy(&v, ev, 8);
        if (v != atomic_load(&notes)) {
            fprintf(stderr, "stress: notification %ld out of order (expected %ld)\n", v, atomic_load(&notes));
            exit(1);
        }
        atomic_fetch_add(&notes, 1);
    }
}

static atomic_long received;
static atomic_long bad_seq;
static void on_push(void *user_data, const char *topic, uint64_t seq, const uint8_t *ev, size_t len) {
    (void)user_data;
    long n = atomic_load(&received);
    long v = -1;
    if (len == 8) memcpy(&v, ev, 8);
    if (strcmp(topic, "stress.Tick") != 0 || seq != (uint64_t)n + 1 || v != n) atomic_fetch_add(&bad_seq, 1);
    atomic_fetch_add(&received, 1);
}

static atomic_long async_done, async_bad;
static void on_answer(void *user_data, peerwire_status status, int32_t code, const uint8_t *resp, size_t len,
                      const char *error) {
    long want = (long)(intptr_t)user_data;
    long got = -1;
    (void)code, (void)error;
    if (status == PEERWIRE_OK && len == 8) memcpy(&got, resp, 8);
    if (got != want) atomic_fetch_add(&async_bad, 1);
    atomic_fetch_add(&async_done, 1);
}

static peerwire_client *client;

static void *caller(void *arg) {
    long start = (long)(intptr_t)arg;
    for (long i = start; i < n_total * 3 / 4; i += 2) {
        peerwire_buffer *resp = NULL;
        CHECK("call", peerwire_client_call(client, "stress.Echo", (const uint8_t *)&i, sizeof i, 10000, &resp));
        long got;
        if (peerwire_buffer_len(resp) != sizeof got) die("echo length", PEERWIRE_INTERNAL);
        memcpy(&got, peerwire_buffer_data(resp), sizeof got);
        if (got != i) die("echo content", PEERWIRE_INTERNAL);
        CHECK("buffer free", peerwire_buffer_free(resp));
    }
    return NULL;
}

static void wait_for(atomic_long *counter, long target, const char *what) {
    for (int i = 0; i < 3000 && atomic_load(counter) < target; i++) usleep(10000);
    if (atomic_load(counter) < target) {
        fprintf(stderr, "stress: %s: %ld of %ld\n", what, atomic_load(counter), target);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH [N]\n", argv[0]);
        return 2;
    }
    if (argc > 2) n_total = atol(argv[2]);
    const char *path = argv[1];
    pthread_t later_thread;
    pthread_create(&later_thread, NULL, answer_later, NULL);

    peerwire_server_options *so = NULL;
    CHECK("server options", peerwire_server_options_new(path, &so));
    CHECK("limit", peerwire_server_options_limit(so, "max_in_flight", 512));
    CHECK("method", peerwire_server_options_method(so, "stress.Echo", echo, NULL));
    CHECK("method", peerwire_server_options_method(so, "stress.Fail", fail_method, NULL));
    CHECK("event", peerwire_server_options_on_event(so, "stress.Note", on_note, NULL));
    if (peerwire_server_options_limit(so, "no_such_limit", 1) != PEERWIRE_INVALID_ARGUMENT) die("unknown limit", PEERWIRE_INTERNAL);
    peerwire_server *server = NULL;
    CHECK("start", peerwire_server_start(so, &server));

    peerwire_client_options *co = NULL;
    CHECK("client options", peerwire_client_options_new(path, &co));
    CHECK("expect uid", peerwire_client_options_expect_server_uid(co, getuid()));
    const uint32_t v1 = 1;
    CHECK("namespace", peerwire_client_options_namespace(co, "stress", &v1, 1, true));
    CHECK("connect", peerwire_client_connect(co, &client));
    const char *topics[] = {"stress.Tick"};
    peerwire_subscription *sub = NULL;
    CHECK("subscribe", peerwire_client_subscribe(client, topics, 1, on_push, NULL, &sub));

    /* Calls: three quarters blocking from two threads, a quarter asynchronous. */
    pthread_t t1, t2;
    pthread_create(&t1, NULL, caller, (void *)(intptr_t)0);
    pthread_create(&t2, NULL, caller, (void *)(intptr_t)1);
    long async_n = n_total - n_total * 3 / 4;
    for (long i = 0; i < async_n; i++) {
        long v = 1000000 + i;
        CHECK("call_async", peerwire_client_call_async(client, "stress.Echo", (const uint8_t *)&v, sizeof v, 10000,
                                                       on_answer, (void *)(intptr_t)v));
        if (i % 256 == 255) wait_for(&async_done, i + 1 - 128, "async answers");
    }
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    wait_for(&async_done, async_n, "async answers");
    if (atomic_load(&async_bad)) die("async answers wrong", PEERWIRE_INTERNAL);

    /* A remote error: the code and message come back. */
    peerwire_buffer *resp = NULL;
    peerwire_status st = peerwire_client_call(client, "stress.Fail", NULL, 0, 0, &resp);
    if (st != PEERWIRE_REMOTE_STATUS || peerwire_last_remote_code() != PEERWIRE_CODE_NOT_FOUND ||
        strstr(peerwire_last_error(), "no such thing") == NULL || resp != NULL)
        die("remote status", st);

    /* Events: N pushed by the server (in batches the client keeps up with), N notifications. */
    for (long i = 0; i < n_total; i++) {
        size_t delivered = 0;
        CHECK("broadcast", peerwire_server_broadcast(server, "stress.Tick", (const uint8_t *)&i, sizeof i, &delivered));
        if (delivered != 1) die("broadcast reached no one", PEERWIRE_INTERNAL);
        long note = i;
        CHECK("notify", peerwire_client_notify(client, "stress.Note", (const uint8_t *)&note, sizeof note));
        /* The client keeps up with the pushes; the server queues a client's events up to a bound
         * (dropping beyond it, by design), so the notifications are paced the same way. */
        if (i % 32 == 31) {
            wait_for(&received, i + 1 - 16, "pushed events");
            wait_for(&notes, i + 1 - 16, "notifications");
        }
    }
    wait_for(&received, n_total, "pushed events");
    wait_for(&notes, n_total, "notifications");
    if (atomic_load(&bad_seq)) die("events out of order", PEERWIRE_INTERNAL);

    /* Misuse is refused, not crashed on. */
    if (peerwire_client_call(client, NULL, NULL, 0, 0, &resp) != PEERWIRE_INVALID_ARGUMENT) die("NULL method", PEERWIRE_INTERNAL);
    if (peerwire_client_call(client, "stress.Echo", NULL, 5, 0, &resp) != PEERWIRE_INVALID_ARGUMENT) die("NULL bytes", PEERWIRE_INTERNAL);
    if (peerwire_client_call(client, "stress.Echo", NULL, 0, 0, NULL) != PEERWIRE_INVALID_ARGUMENT) die("NULL out", PEERWIRE_INTERNAL);
    if (peerwire_server_broadcast(server, "not a topic", NULL, 0, NULL) != PEERWIRE_INVALID_ARGUMENT) die("bad topic", PEERWIRE_INTERNAL);
    if (peerwire_server_push(server, 999999, "stress.Tick", NULL, 0) != PEERWIRE_NOT_DELIVERED) die("push to nobody", PEERWIRE_INTERNAL);
    if (peerwire_client_free(NULL) != PEERWIRE_OK) die("free NULL", PEERWIRE_INTERNAL);

    peerwire_stats stats;
    CHECK("stats", peerwire_server_stats(server, &stats));
    CHECK("subscription free", peerwire_subscription_free(sub));
    CHECK("client close", peerwire_client_close(client));
    CHECK("client free", peerwire_client_free(client));
    CHECK("shutdown", peerwire_server_shutdown(server));
    CHECK("wait", peerwire_server_wait(server, 10000));
    CHECK("server free", peerwire_server_free(server));
    pthread_mutex_lock(&later.mu);
    later.stop = 1;
    pthread_cond_signal(&later.cv);
    pthread_mutex_unlock(&later.mu);
    pthread_join(later_thread, NULL);
    if (access(path, F_OK) == 0) die("the socket outlived the server", PEERWIRE_INTERNAL);
    printf("stress: %ld calls (%ld asynchronous), %ld events pushed, %ld notifications; server saw %llu requests\n",
           n_total, async_n, atomic_load(&received), atomic_load(&notes), (unsigned long long)stats.requests);
    return 0;
}
