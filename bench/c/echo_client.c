/*
 * The benchmark's C client (issue 18): peerwire's C API, blocking calls of SIZE-byte echoes to
 * bench.Echo on a plain connection. WARM unmeasured calls, then N measured ones; prints each
 * round trip in nanoseconds, one per line, for the harness (bench/src/c_client.rs).
 *
 *   echo_client SOCKET N WARM SIZE
 */
#define _POSIX_C_SOURCE 200809L
#include <peerwire.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail(const char *what, peerwire_status s) {
    fprintf(stderr, "echo_client: %s: %s: %s\n", what, peerwire_status_name(s), peerwire_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SOCKET N WARM SIZE\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]), warm = atol(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    unsigned char *msg = malloc(size ? size : 1);
    long long *ns = malloc(sizeof *ns * (size_t)(n ? n : 1));
    if (!msg || !ns) return 1;
    memset(msg, 7, size);
    peerwire_client_options *opts = NULL;
    peerwire_status s = peerwire_client_options_new(argv[1], &opts);
    if (s != PEERWIRE_OK) return fail("options", s);
    const uint32_t v1 = 1;
    if ((s = peerwire_client_options_namespace(opts, "bench", &v1, 1, true)) != PEERWIRE_OK) return fail("namespace", s);
    peerwire_client *client = NULL;
    if ((s = peerwire_client_connect(opts, &client)) != PEERWIRE_OK) return fail("connect", s);
    for (long i = 0; i < warm + n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        peerwire_buffer *resp = NULL;
        s = peerwire_client_call(client, "bench.Echo", msg, size, 30000, &resp);
        if (s != PEERWIRE_OK) return fail("call", s);
        size_t got = peerwire_buffer_len(resp);
        peerwire_buffer_free(resp);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (got != size) {
            fprintf(stderr, "echo_client: sent %zu bytes, got %zu back\n", size, got);
            return 1;
        }
        if (i >= warm) ns[i - warm] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
    peerwire_client_free(client);
    for (long i = 0; i < n; i++) printf("%lld\n", ns[i]);
    free(ns);
    free(msg);
    return 0;
}
