/*
 * pb.h: just enough protobuf wire format for the display protocol's messages
 * (proto/display/v1/display.proto): varints and length-delimited fields, written into and read
 * from caller-owned buffers. Header-only C99, usable from C++. Every read is bounds-checked.
 */
#ifndef PEERWIRE_EXAMPLE_PB_H
#define PEERWIRE_EXAMPLE_PB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int overflow; /* set when a write did not fit */
} pb_writer;

static inline void pb_put_byte(pb_writer *w, uint8_t b) {
    if (w->len < w->cap) {
        w->buf[w->len++] = b;
    } else {
        w->overflow = 1;
    }
}

static inline void pb_put_varint(pb_writer *w, uint64_t v) {
    while (v >= 0x80) {
        pb_put_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    pb_put_byte(w, (uint8_t)v);
}


/* A varint field (wire type 0); proto3 omits zero values. */
static inline void pb_put_uint(pb_writer *w, uint32_t field, uint64_t v) {
    if (v == 0) {
        return;
    }
    pb_put_varint(w, ((uint64_t)field << 3) | 0);
    pb_put_varint(w, v);
}

/* A length-delimited field (wire type 2): bytes, a string or an embedded message. */
static inline void pb_put_bytes(pb_writer *w, uint32_t field, const void *data, size_t len) {
    pb_put_varint(w, ((uint64_t)field << 3) | 2);
    pb_put_varint(w, len);
    if (w->len + len <= w->cap) {
        memcpy(w->buf + w->len, data, len);
        w->len += len;
    } else {
        w->overflow = 1;
    }
}

static inline void pb_put_string(pb_writer *w, uint32_t field, const char *s) {
    size_t n = strlen(s);
    if (n > 0) {
        pb_put_bytes(w, field, s, n);
    }
}

typedef struct {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int error; /* set on malformed input */
} pb_reader;

static inline int pb_get_varint(pb_reader *r, uint64_t *v) {
    uint64_t out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->len) {
            r->error = 1;
            return 0;
        }
        uint8_t b = r->p[r->pos++];
        out |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = out;
            return 1;
        }
    }
    r->error = 1;
    return 0;
}

/* One field: its number and wire type; for wire type 0 the value, for 2 the bytes. Returns 0 at
 * the end or on an error (r->error). Fields of other wire types are skipped. */
typedef struct {
    uint32_t field;
    uint32_t wire;
    uint64_t value;
    const uint8_t *data;
    size_t len;
} pb_field;

static inline int pb_next(pb_reader *r, pb_field *f) {
    uint64_t key;
    while (r->pos < r->len && !r->error) {
        if (!pb_get_varint(r, &key)) {
            return 0;
        }
        f->field = (uint32_t)(key >> 3);
        f->wire = (uint32_t)(key & 7);
        f->data = NULL;
        f->len = 0;
        f->value = 0;
        if (f->wire == 0) {
            if (!pb_get_varint(r, &f->value)) {
                return 0;
            }
            return 1;
        } else if (f->wire == 2) {
            uint64_t n;
            if (!pb_get_varint(r, &n) || n > r->len - r->pos) {
                r->error = 1;
                return 0;
            }
            f->data = r->p + r->pos;
            f->len = (size_t)n;
            r->pos += (size_t)n;
            return 1;
        } else if (f->wire == 5) {
            if (r->len - r->pos < 4) {
                r->error = 1;
                return 0;
            }
            r->pos += 4;
        } else if (f->wire == 1) {
            if (r->len - r->pos < 8) {
                r->error = 1;
                return 0;
            }
            r->pos += 8;
        } else {
            r->error = 1;
            return 0;
        }
    }
    return 0;
}

/* Copies a length-delimited field into a NUL-terminated string of at most cap-1 bytes. */
static inline void pb_copy_string(const pb_field *f, char *out, size_t cap) {
    size_t n = f->len < cap - 1 ? f->len : cap - 1;
    if (n > 0) {
        memcpy(out, f->data, n);
    }
    out[n] = '\0';
}

#endif
