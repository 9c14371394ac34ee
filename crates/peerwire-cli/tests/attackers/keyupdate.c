/* A hostile mutual-TLS peer for peerwire's tests (issue 14, item 3): after its Hello it never
 * reads again, and loops KeyUpdate(update_requested) plus a Pong frame, so that the server
 * must produce a KeyUpdate of its own for each, which it cannot send.
 *
 * usage: keyupdate SOCKET CERT KEY HELLO_HEX PONG_HEX SECONDS
 * prints "welcome", then "updates N" and why it stopped; exit 0 once the server closed the
 * connection (a write failed), 3 if it was still open after SECONDS. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static size_t unhex(const char *hex, unsigned char *out, size_t cap) {
    size_t n = strlen(hex) / 2;
    if (n > cap) return 0;
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &out[i]);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s SOCKET CERT KEY HELLO PONG SECONDS\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    unsigned char hello[4096], pong[256];
    size_t hello_len = unhex(argv[4], hello, sizeof hello), pong_len = unhex(argv[5], pong, sizeof pong);
    int seconds = atoi(argv[6]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("connect"); return 2; }
    int small = 4096; /* what the server sends piles up on its side, not ours */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_use_certificate_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr); return 2;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) { ERR_print_errors_fp(stderr); return 2; }
    if (SSL_write(ssl, hello, (int)hello_len) <= 0) { ERR_print_errors_fp(stderr); return 2; }
    unsigned char buf[4096];
    if (SSL_read(ssl, buf, sizeof buf) <= 0) { ERR_print_errors_fp(stderr); return 2; }
    printf("welcome\n");
    fflush(stdout);
    time_t end = time(NULL) + seconds;
    long updates = 0;
    while (time(NULL) < end) {
        if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1 ||
            SSL_write(ssl, pong, (int)pong_len) <= 0) {
            printf("updates %ld\nclosed by the server\n", updates);
            return 0;
        }
        updates++;
    }
    printf("updates %ld\nstill open\n", updates);
    return 3;
}
