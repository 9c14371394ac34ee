/* Failure handling shared by the test programs (stress.c, lifecycle.c): a peerwire call that
 * does not return PEERWIRE_OK ends the program, naming the call, the status and the thread's
 * last error. PROGRAM is the name printed first; define it before including this file. */
#ifndef PEERWIRE_EXAMPLES_CHECK_H
#define PEERWIRE_EXAMPLES_CHECK_H

#include <peerwire.h>

#include <stdio.h>
#include <stdlib.h>

static void die(const char *what, peerwire_status s) {
    fprintf(stderr, "%s: %s: %s: %s\n", PROGRAM, what, peerwire_status_name(s), peerwire_last_error());
    exit(1);
}

#define CHECK(what, expr)                        \
    do {                                         \
        peerwire_status s_ = (expr);             \
        if (s_ != PEERWIRE_OK) die((what), s_);  \
    } while (0)

#endif
