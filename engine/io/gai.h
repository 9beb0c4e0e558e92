/*
** gai.h: name lookups (gai.c) that an engine can walk away from. Used by
** braid.dns.resolve (dns.c), braid.tcp.connect (tcp.c) and
** braid.tcp.listen (tcp_server.c) instead of uv_getaddrinfo, whose request
** holds the loop (and so the exit, braid_close and uv_loop_close) until
** getaddrinfo returns, which a dead resolver makes tens of seconds even
** after the lookup was cancelled.
*/
#ifndef BRAID_GAI_H
#define BRAID_GAI_H

#include <netdb.h>
#include <uv.h>

struct braid_gai;

/* Called once, on the loop's thread, with the outcome of a lookup that was
** not abandoned: status 0 and res (the callee's: free it with
** uv_freeaddrinfo; it may be NULL) or a negative UV_EAI_* / UV_E* code. The
** lookup is finished: never abandon it after this. */
typedef void (*braid_gai_cb)(struct braid_gai *g, int status,
                             struct addrinfo *res);

/* Starts resolving host (and service, NULL for none) with hints on one of
** braid's resolver threads; cb runs on loop's thread with `data` readable
** through braid__gai_data. A label beyond ASCII is looked up in its IDNA
** form ("xn--" and Punycode), as uv_getaddrinfo does. Returns 0 and sets
** *out, or a negative libuv code (UV_EINVAL: host is not UTF-8 or longer
** than 255 bytes in that form; nothing was started, cb never runs). The lookup holds the loop
** (one uv_async_t) until cb has run or it is abandoned. */
int braid__gai_start(uv_loop_t *loop, struct braid_gai **out,
                     const char *host, const char *service,
                     const struct addrinfo *hints, braid_gai_cb cb,
                     void *data);

/* The `data` given to braid__gai_start. */
void *braid__gai_data(struct braid_gai *g);

/* Gives up a lookup whose cb has not run, on the loop's thread: cb never
** runs, and the loop is not held once its close callback has run (in the
** loop's next turn). A thread still inside getaddrinfo frees what it finds
** when it returns, even after the engine and its loop are gone. */
void braid__gai_abandon(struct braid_gai *g);

#endif
