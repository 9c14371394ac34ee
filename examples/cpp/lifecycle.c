/*
 * Creates and destroys a server and a client N times (each with one call, a subscription and
 * a pushed event), for the leak run of `cargo xtask ffi` (LeakSanitizer or valgrind): whatever
 * the library allocates for them must be freed by the peerwire_*_free functions.
 *
 *   lifecycle SOCKET_PATH [N]      (N defaults to 1000)
 */
#include <peerwire.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROGRAM "lifecycle"
#include "check.h"

static void echo(void *user_data, const peerwire_peer_info *peer, const uint8_t *req, size_t len,
                 peerwire_responder *responder) {
    (void)user_data, (void)peer;
    CHECK("answer", peerwire_responder_send(responder, req, len));
}

static void on_push(void *user_data, const char *topic, uint64_t seq, const uint8_t *ev, size_t len) {
    (void)topic, (void)seq, (void)ev, (void)len;
    __atomic_add_fetch((int *)user_data, 1, __ATOMIC_SEQ_CST);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH [N]\n", argv[0]);
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 1000;
    const char *path = argv[1];
    for (long i = 0; i < n; i++) {
        peerwire_server_options *so = NULL;
        CHECK("server options", peerwire_server_options_new(path, &so));
        CHECK("threads", peerwire_server_options_threads(so, 1));
        CHECK("method", peerwire_server_options_method(so, "life.Echo", echo, NULL));
        peerwire_server *server = NULL;
        CHECK("start", peerwire_server_start(so, &server));
        peerwire_client_options *co = NULL;
        CHECK("client options", peerwire_client_options_new(path, &co));
        const uint32_t v1 = 1;
        CHECK("namespace", peerwire_client_options_namespace(co, "life", &v1, 1, true));
        peerwire_client *client = NULL;
        CHECK("connect", peerwire_client_connect(co, &client));
        int pushed = 0;
        const char *topics[] = {"life.Tick"};
        peerwire_subscription *sub = NULL;
        CHECK("subscribe", peerwire_client_subscribe(client, topics, 1, on_push, &pushed, &sub));
        peerwire_buffer *resp = NULL;
        CHECK("call", peerwire_client_call(client, "life.Echo", (const uint8_t *)"hello", 5, 5000, &resp));
        if (peerwire_buffer_len(resp) != 5 || memcmp(peerwire_buffer_data(resp), "hello", 5) != 0) die("echo", PEERWIRE_INTERNAL);
        CHECK("buffer free", peerwire_buffer_free(resp));
        CHECK("broadcast", peerwire_server_broadcast(server, "life.Tick", (const uint8_t *)"t", 1, NULL));
        for (int k = 0; k < 500 && __atomic_load_n(&pushed, __ATOMIC_SEQ_CST) == 0; k++) usleep(1000);
        if (__atomic_load_n(&pushed, __ATOMIC_SEQ_CST) != 1) die("pushed event", PEERWIRE_INTERNAL);
        /* Options freed without use, too. */
        peerwire_client_options *unused = NULL;
        CHECK("unused options", peerwire_client_options_new(path, &unused));
        CHECK("unused options free", peerwire_client_options_free(unused));
        CHECK("subscription free", peerwire_subscription_free(sub));
        CHECK("client free", peerwire_client_free(client));
        CHECK("server free", peerwire_server_free(server));
    }
    printf("lifecycle: %ld servers and clients created and destroyed\n", n);
    return 0;
}
